// The reply box's counter: parts and characters left, counted as the daemon composes a
// reply (responder/pipeline.py compose and responder/text.py split_parts): the signature on
// every part, "(i/n)" markers when there is more than one, breaks preferred after
// punctuation or a space within the last 15 characters. Characters are code points.
"use strict";
(function () {
  var BREAK_AFTER = "。，！？；、.,!?;";
  var WINDOW = 15;

  function chars(text) { return Array.from(text); }
  function markerWidth(parts) { return 2 * String(parts).length + 3; }

  function bodies(text, room) {
    var out = [], start = 0;
    while (text.length - start > room) {
      var end = start + room, cut = end;
      for (var i = end; i > start && i >= end - WINDOW; i--) {
        var ch = text[i - 1];
        if (/\s/.test(ch) || BREAK_AFTER.indexOf(ch) >= 0) { cut = i; break; }
      }
      out.push(text.slice(start, cut));
      start = cut;
    }
    out.push(text.slice(start));
    return out;
  }

  function count(raw, limit, signature, position, maxParts) {
    var text = raw.trim();
    if (signature) {
      if (text.startsWith(signature)) { text = text.slice(signature.length).trim(); }
      if (text.endsWith(signature)) { text = text.slice(0, -signature.length).trim(); }
      if (text.indexOf(signature) >= 0) { signature = ""; }
    }
    var cs = chars(text), fixed = chars(signature).length;
    if (cs.length === 0) { return { parts: 0, left: limit - fixed, truncated: false }; }
    if (cs.length <= limit - fixed) { return { parts: 1, left: limit - fixed - cs.length, truncated: false }; }
    for (var digits = 1; digits < 6; digits++) {
      var room = limit - fixed - markerWidth(Math.pow(10, digits) - 1);
      if (room < 1) { break; }
      var found = bodies(cs, room);
      if (found.length < Math.pow(10, digits)) {
        var last = found[found.length - 1].length;
        return { parts: Math.min(found.length, maxParts), left: room - last, truncated: found.length > maxParts };
      }
    }
    return { parts: maxParts, left: 0, truncated: true };
  }

  function attach(box) {
    var output = document.getElementById(box.getAttribute("aria-describedby"));
    if (!output) { return; }
    var limit = parseInt(box.dataset.limit, 10) || 70;
    var maxParts = parseInt(box.dataset.maxParts, 10) || 3;
    function update() {
      var found = count(box.value, limit, box.dataset.signature || "", box.dataset.position, maxParts);
      var words = (box.dataset.format || "{parts} / {left}")
        .replace("{parts}", String(found.parts)).replace("{left}", String(found.left));
      output.textContent = words + (found.truncated ? " ⚠" : "");
    }
    box.addEventListener("input", update);
    update();
  }

  function ready() {
    document.querySelectorAll("textarea[data-limit]").forEach(attach);
  }
  if (document.readyState === "loading") { document.addEventListener("DOMContentLoaded", ready); } else { ready(); }
  window.responderCount = count;
})();
