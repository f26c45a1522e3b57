"""Keyword matching cost per message as the number of rules grows, against a naive scan.

Run: ``python benchmarks/keywords.py`` (``--quick`` for a short run). For 10, 1,000 and
100,000 rules (a word/exact/prefix mix, plus 20 regex rules each time) it prints:

- the start-up cost: parsing the ``[keywords]`` table (as TOML gives it) and compiling
  the rules into their indexes;
- the median cost of matching one message (normalisation included) over several runs,
  with ``responder_plugins.keywords.Matcher``;
- the same for a naive matcher (one compiled regex per rule, scanned in order) and the
  ratio between the two;
- the cost with 1,000 conversation flows (three steps each) declared beside the rules,
  as a message from a sender in no flow pays it: the flows' start words are looked up
  first, then the keyword rules (``responder_plugins.conversations.begin``), and its ratio
  to the cost without flows (target: at most 2×).

The messages mix texts that hit an indexed keyword, texts that hit a regex rule and texts
that match nothing (the worst case for a scan).
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import re
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import responder_plugins.conversations as conversations
import responder_plugins.keywords as kw
from responder import Table

ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ0123456789"
CHINESE = "查询订单退款物流发票积分会员活动优惠地址电话人工客服余额充值账户密码"
REGEX_RULES = 20
FLOWS = 1_000


def keywords(count: int, rng: random.Random) -> list[str]:
    """``count`` distinct keywords (after normalisation): Latin codes and Chinese words."""
    seen: set[str] = set()
    while len(seen) < count:
        if rng.random() < 0.7:
            word = "".join(rng.choices(ALPHABET, k=rng.randint(2, 8)))
        else:
            word = "".join(rng.choices(CHINESE, k=rng.randint(2, 5)))
        seen.add(kw.normalise(word))
    return sorted(seen)


def config(count: int, seed: int = 7) -> dict[str, Any]:
    """A ``[keywords]`` table with ``count`` word/exact/prefix rules and the regex rules."""
    rng = random.Random(seed)
    modes = ["word"] * 6 + ["exact"] * 2 + ["prefix"] * 2
    rules: list[dict[str, Any]] = [
        {"keywords": [word], "match": modes[index % 10], "reply": f"reply {index} {{args}}"}
        for index, word in enumerate(keywords(count, rng))
    ]
    for index in range(REGEX_RULES):
        pattern = rf"^(?:快递|KD){index}号\s*(?P<no>\d{{6,12}})$"
        rules.append({"keywords": [pattern], "match": "regex", "reply": "order {no}"})
    return {"rules": rules}


def messages(section: dict[str, Any], count: int, seed: int = 11) -> list[str]:
    """A third hit an indexed keyword, a third a regex rule, a third nothing.

    The regex and unmatched texts use characters the generated keywords never contain,
    so each text falls in the same category whatever the number of rules.
    """
    rng = random.Random(seed)
    plain = [rule for rule in section["rules"] if rule["match"] != "regex"]
    texts = []
    for index in range(count):
        kind = index % 3
        if kind == 0:
            rule = rng.choice(plain)
            args = "" if rule["match"] == "exact" else f" {rng.randint(1, 99999)}"
            texts.append(rule["keywords"][0].upper() + args)
        elif kind == 1:
            texts.append(f"快递{rng.randrange(REGEX_RULES)}号 {rng.randint(10**6, 10**9)}")
        else:
            texts.append(rng.choice(["你好，请问在吗？", "好的，谢谢！", "几点下班", "？"]))
    return texts


def compile_rules(section: dict[str, Any]) -> kw.KeywordSettings:
    problems: list[str] = []
    table = Table(section, file="benchmark.toml", prefix="keywords", problems=problems)
    settings = kw.parse(table)
    table.finish()
    if problems:
        raise SystemExit("\n".join(problems[:5]))
    return settings


def flows(count: int) -> conversations.ConversationsSettings:
    """``count`` flows of three steps each (a choice, a pattern, free text), each started
    by a word the generated keywords and messages never contain."""
    section = {
        "flows": [
            {
                "name": f"flow{index}",
                "start": [f"流程{index}", f"LC{index}"],
                "cancel": ["退出"],
                "cancel_reply": "已退出。",
                "done": "已记录 {date} {slot} {phone}",
                "steps": [
                    {"name": "date", "ask": "请回复日期"},
                    {
                        "name": "slot",
                        "ask": "请选择：1 上午 2 下午",
                        "choices": {"1": "上午", "2": "下午"},
                        "retry_reply": "请回复 1 或 2",
                    },
                    {"name": "phone", "ask": "请回复电话", "pattern": r"1[3-9]\d{9}"},
                ],
            }
            for index in range(count)
        ]
    }
    problems: list[str] = []
    table = Table(section, file="benchmark.toml", prefix="conversations", problems=problems)
    settings = conversations.parse(table)
    table.finish()
    if problems:
        raise SystemExit("\n".join(problems[:5]))
    return settings


class NaiveMatcher:
    """One compiled regex per rule, tried in order: the cost grows with the rules."""

    def __init__(self, section: dict[str, Any]) -> None:
        self.rules: list[re.Pattern[str]] = []
        for rule in section["rules"]:
            word = rule["keywords"][0]
            if rule["match"] == "regex":
                self.rules.append(re.compile(word, re.IGNORECASE))
                continue
            escaped = re.escape(kw.normalise(word))
            tail = {"exact": "$", "word": r"(?=$|[\s\W])", "prefix": ""}[rule["match"]]
            self.rules.append(re.compile(f"^{escaped}{tail}"))

    def match(self, text: str) -> int | None:
        key = kw.normalise(text)
        for index, pattern in enumerate(self.rules):
            if pattern.search(key):
                return index
        return None


def per_message(match: Callable[[str], object], texts: Sequence[str], runs: int) -> float:
    """Median over ``runs`` of the mean µs per message."""
    results = []
    for _ in range(runs):
        start = time.perf_counter()
        for text in texts:
            match(text)
        results.append((time.perf_counter() - start) / len(texts) * 1e6)
    return statistics.median(results)


def machine() -> str:
    """The CPU model and core count, as far as the platform tells."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            model = next(
                (line.split(":", 1)[1].strip() for line in info if line.startswith("model name")),
                model,
            )
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs and messages")
    args = parser.parse_args(argv)
    runs, count = (3, 300) if args.quick else (7, 3000)
    moment = time.time()
    print(f"python {platform.python_version()} on {machine()}")
    print(f"{runs} runs, {count} messages each (naive: fewer messages at 100,000 rules)\n")
    header = (
        "rules",
        "compile s",
        "indexed µs/msg",
        "naive µs/msg",
        "naive / indexed",
        f"with {FLOWS:,} flows µs/msg",
        "flows / indexed",
    )
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---:" for _ in header) + "|")
    baseline = None
    declared = flows(FLOWS)
    for size in (10, 1_000, 100_000):
        section = config(size)
        texts = messages(section, count)
        start = time.perf_counter()
        settings = compile_rules(section)
        compile_seconds = time.perf_counter() - start
        match = settings.matcher.match
        indexed = per_message(lambda text, m=match: m(text, "0888008", moment), texts, runs)

        def flows_then_rules(text: str, m: Any = match) -> object:
            return conversations.begin(declared, text) or m(text, "0888008", moment)

        with_flows = per_message(flows_then_rules, texts, runs)
        naive_matcher = NaiveMatcher(section)
        naive_texts = texts if size < 100_000 else texts[:30]
        naive = per_message(naive_matcher.match, naive_texts, 3 if size == 100_000 else runs)
        baseline = baseline or indexed
        print(
            f"| {size:,} + {REGEX_RULES} regex | {compile_seconds:.3f} | {indexed:.1f} "
            f"| {naive:,.1f} | {naive / indexed:,.1f}× | {with_flows:.1f} "
            f"| {with_flows / indexed:.2f}× |"
        )
    print(f"\nindexed cost at 100,000 rules / at 10 rules: {indexed / baseline:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
