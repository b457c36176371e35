"""Access-token verification: billing/services/tokens.py against raw itsdangerous.

Both sides verify the same token (same secrets, salt, digest and payload). ``TokenSigner.verify``
does more than ``URLSafeTimedSerializer.loads``: it checks the token's shape, its expiry and signing
time against ``now``, and builds typed claims. The ratio says what that costs; the target is
ours / raw >= 0.9.

Each side runs a fixed number of iterations, split into rounds that alternate between the two, so
a burst of load on the machine hits both alike. The rate of a side is that of its best round.

    .venv/bin/python bench/bench_tokens.py [--iterations N] [--rounds R]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import importlib.util
import platform
import secrets
import sys
import timeit
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

from itsdangerous import URLSafeTimedSerializer

TOKENS_PY = Path(__file__).resolve().parent.parent / "billing" / "services" / "tokens.py"
NEW_SECRET = secrets.token_urlsafe(32)
OLD_SECRET = secrets.token_urlsafe(32)
TARGET_RATIO = 0.9


def load_tokens_module() -> ModuleType:
    """Load tokens.py by its path, as a content site would, without importing the billing app."""
    spec = importlib.util.spec_from_file_location("tollgate_tokens", TOKENS_PY)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def best_rate(
    candidates: dict[str, Callable[[], Any]], iterations: int, rounds: int
) -> dict[str, float]:
    """Run each callable ``iterations`` times in alternating rounds; return its best ops/s."""
    per_round = max(1, iterations // rounds)
    best = dict.fromkeys(candidates, 0.0)
    for _ in range(rounds):
        for name, call in candidates.items():
            seconds = timeit.Timer(call).timeit(number=per_round)
            best[name] = max(best[name], per_round / seconds)
    return best


def main() -> None:
    """Measure both verifications and print the figures, then the same as markdown."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=150_000, help="per side (~2 s each)")
    parser.add_argument("--rounds", type=int, default=10, help="alternating rounds per side")
    args = parser.parse_args()

    tokens = load_tokens_module()
    now = datetime.now(UTC).replace(microsecond=0)
    signer = tokens.TokenSigner([NEW_SECRET, OLD_SECRET])
    token, _ = signer.issue(
        reader_id="rdr_7Hq2kXw9Lm4Pz",
        granted=True,
        reason="subscription",
        plan="individual-monthly",
        group=None,
        until=now + timedelta(days=23),
        client_id="cli_content_site",
        now=now,
    )
    raw = URLSafeTimedSerializer(
        [OLD_SECRET, NEW_SECRET],  # itsdangerous signs with the last key
        salt=tokens.SALT,
        signer_kwargs={"digest_method": hashlib.sha256},
    )
    claims = signer.verify(token, now=now)
    payload = raw.loads(token)
    assert payload["reader_id"] == claims.reader_id and payload["exp"] == int(
        claims.expires_at.timestamp()
    ), "both sides must read the same token"

    rates = best_rate(
        {
            "ours": lambda: signer.verify(token, now=now),
            "raw": lambda: raw.loads(token),
        },
        args.iterations,
        args.rounds,
    )
    ratio = rates["ours"] / rates["raw"]
    verdict = "meets" if ratio >= TARGET_RATIO else "MISSES"
    python = f"Python {platform.python_version()}, itsdangerous {importlib.metadata.version('itsdangerous')}"

    print(f"Access-token verification, {args.iterations:,} iterations per side ({python})")
    print(f"  tokens.TokenSigner.verify        {rates['ours']:>10,.0f} ops/s")
    print(f"  URLSafeTimedSerializer.loads     {rates['raw']:>10,.0f} ops/s")
    print(
        f"  ratio ours / raw                 {ratio:>10.2f}  ({verdict} target >= {TARGET_RATIO})"
    )
    print()
    print("| verification | ops/s | µs/op |")
    print("| --- | ---: | ---: |")
    print(
        f"| `TokenSigner.verify` (tokens.py) | {rates['ours']:,.0f} | {1e6 / rates['ours']:.1f} |"
    )
    print(
        f"| `URLSafeTimedSerializer.loads` (raw) | {rates['raw']:,.0f} | {1e6 / rates['raw']:.1f} |"
    )
    print(f"| ratio ours / raw (target >= {TARGET_RATIO}) | {ratio:.2f} | |")
    print()
    print(f"{args.iterations:,} iterations per side, best of {args.rounds} alternating rounds;")
    print(f"{python}; `.venv/bin/python bench/bench_tokens.py`.")


if __name__ == "__main__":
    main()
