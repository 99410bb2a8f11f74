#!/usr/bin/env python3
"""Ask a palr server for recommendations and print them with the stage timings.

    python clients/python/examples/recommend.py --history 1,50,172,181,258,127 --k 5
    PALR_TOKEN=... python clients/python/examples/recommend.py --addr https://recs.internal:50051 \\
        --ca-cert ca.pem --history 1,50,172

Needs palr-client installed (pip install ./clients/python).
"""

import argparse
import os
import sys

from palr_client import Client, PalrError


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--addr", default="127.0.0.1:50051", help="HOST:PORT, http:// or https://")
    p.add_argument("--history", required=True, help="item ids, oldest first, comma-separated")
    p.add_argument("--k", type=int, help="how many items (server default)")
    p.add_argument("--mode", choices=["score", "generate", "retriever"], help="(server default)")
    p.add_argument("--retriever", help="retriever plugin (server default)")
    p.add_argument("--num-candidates", type=int, help="candidates the LLM ranks (server default)")
    p.add_argument("--ca-cert", help="PEM CA of the server's certificate (TLS)")
    p.add_argument("--client-cert", help="PEM client certificate (mutual TLS)")
    p.add_argument("--client-key", help="PEM client key (mutual TLS)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds (default 30)")
    args = p.parse_args()

    client = Client(
        args.addr,
        token=os.environ.get("PALR_TOKEN"),
        ca_cert=args.ca_cert,
        client_cert=args.client_cert,
        client_key=args.client_key,
        timeout=args.timeout,
    )
    with client:
        try:
            answer = client.recommend(
                args.history.split(","),
                k=args.k,
                mode=args.mode,
                retriever=args.retriever,
                num_candidates=args.num_candidates,
            )
        except PalrError as e:
            print(f"error: {e}", file=sys.stderr)  # e.g. "INVALID_ARGUMENT: history[1] = ..."
            return 1

    print(f"{'rank':>4}  {'id':<7} {'title':<50} {'score':>8}  {'by LLM':>6}")
    for rank, item in enumerate(answer.items, 1):
        by_llm = "yes" if item.ranked_by_llm else "no"
        print(f"{rank:>4}  {item.item_id:<7} {item.title[:50]:<50} {item.score:>8.4f}  {by_llm:>6}")
    t = answer.timings
    print(f"mode {answer.mode}, retriever {answer.retriever}")
    stages = ["retrieve", "queue", "prompt", "prefill", "decode", "total"]
    print(" | ".join(f"{s} {getattr(t, s + '_ms'):.1f} ms" for s in stages))
    return 0


if __name__ == "__main__":
    sys.exit(main())
