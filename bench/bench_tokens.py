"""Access-token verification: billing/services/tokens.py against raw itsdangerous.

Both sides verify a token with the same secret, salt, digest and payload. Ours carries the key id
in front (``KID.PAYLOAD.TIMESTAMP.SIGNATURE``), which raw itsdangerous cannot parse, so the raw
side verifies the same payload signed by ``URLSafeTimedSerializer`` itself (three parts).
``TokenSigner.verify`` does more than ``URLSafeTimedSerializer.loads``: it checks the token's shape,
picks the key by kid among the client's key set, checks the client, the expiry and the signing
time against ``now``, and builds typed claims. The ratio says what that costs; the target is
ours / raw >= 0.9.

Each side runs a fixed number of iterations, split into rounds that alternate between the two, so
a burst of load on the machine hits both alike. The rate of a side is that of its best round.

    .venv/bin/python bench/bench_tokens.py [--iterations N] [--rounds R]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import importlib.metadata
import importlib.util
import json
import platform
import secrets
import sys
import timeit
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import time_machine
from itsdangerous import URLSafeTimedSerializer

TOKENS_PY = Path(__file__).resolve().parent.parent / "billing" / "services" / "tokens.py"
NEW_KEY = f"tk_{secrets.token_urlsafe(6)}.{secrets.token_urlsafe(32)}"
OLD_KEY = f"tk_{secrets.token_urlsafe(6)}.{secrets.token_urlsafe(32)}"
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
    signer = tokens.TokenSigner([NEW_KEY, OLD_KEY], client_id="cli_content_site")
    token, _ = signer.issue(
        reader_id="rdr_7Hq2kXw9Lm4Pz",
        reason="subscription",
        plan="individual-monthly",
        group_id=None,
        until=now + timedelta(days=23),
        now=now,
    )
    raw = URLSafeTimedSerializer(
        NEW_KEY.split(".", 1)[1],
        salt=tokens.SALT,
        signer_kwargs={"digest_method": hashlib.sha256},
    )
    payload_part = token.split(".")[1]
    same_payload = json.loads(
        base64.urlsafe_b64decode(payload_part + "=" * (-len(payload_part) % 4))
    )
    with time_machine.travel(now, tick=False):
        raw_token = raw.dumps(same_payload)
    claims = signer.verify(token, now=now)
    payload = raw.loads(raw_token)
    assert payload["reader_id"] == claims.reader_id and payload["exp"] == int(
        claims.expires_at.timestamp()
    ), "both sides must read the same payload"

    rates = best_rate(
        {
            "ours": lambda: signer.verify(token, now=now),
            "raw": lambda: raw.loads(raw_token),
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
