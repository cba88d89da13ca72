"""Link changes mid-run on the test-bed, repeated: how many requests until the adaptive device client's cut
moves, the slowest request in between, and a deadline-mode client interleaved (digitnet, emulated rpi4-like
device). Needs root (network namespaces + tc). BENCHMARKS.md, "Deadline mode and a link that changes".

    .venv/bin/python benchmarks/bench_split_change.py --repeat 3 --change 20mbit,5mbit --change 1gbit,1mbit
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="digitnet")
    ap.add_argument("--change", action="append", help="FROM,TO rates (repeatable)")
    ap.add_argument("--repeat", type=int, default=3, help="runs of the first change")
    ap.add_argument("--requests", type=int, default=60, help="requests on each side of the change")
    ap.add_argument("--deadline-ms", type=float, default=30.0)
    args = ap.parse_args()
    changes = [tuple(c.split(",")) for c in (args.change or ["20mbit,5mbit"])]
    changes = [changes[0]] * args.repeat + changes[1:]

    from edgeinfer.models.dnn import zoo
    from edgeinfer.split.bench import run_link_change, start_edge
    from edgeinfer.split.deadline import DeadlineClient
    from edgeinfer.split.device import ClientConfig, DeviceClient
    from edgeinfer.split.profile import load_device, profile_model
    from edgeinfer.testbed.netns import Testbed

    m = zoo.load(args.model)
    data = zoo.dataset(args.model)
    dev = profile_model(m, load_device("rpi4-like"), data["val"].x[:16], 5, 30)
    edge = profile_model(m, load_device("edge-host"), data["val"].x[:16], 5, 30)
    test = data["test"]

    def item(i: int) -> tuple:
        j = i % len(test)
        return test.x[j : j + 1], int(test.y[j])

    with Testbed(1, rate=None, name="spchg") as tb:
        url = start_edge(tb, 0, args.model, 8090, 0.0, Path("/tmp/edgeinfer-split-change-edge.log"))
        for a, b in changes:
            final = ClientConfig(exits=[m.final.name])
            deadline = ClientConfig(deadline_ms=args.deadline_ms)
            with (
                DeviceClient(m, dev, edge, url, final) as client,
                DeadlineClient(m, dev, edge, url, deadline) as dl,
            ):
                ch = run_link_change(tb, 0, client, item, a, b, args.requests, dl)
            ms = ch.seconds_to_replan and round(1000 * ch.seconds_to_replan)
            print(
                f"{a} -> {b}: split {ch.split_before} -> {ch.split_after} after {ch.requests_to_replan} "
                f"request(s) ({ms} ms); transient max {ch.transient_max_ms:.1f} ms; "
                f"median {ch.before_ms:.1f} -> {ch.after_ms:.1f} ms, max after "
                f"{ch.after_max_ms:.1f} ms; deadline {args.deadline_ms:g} ms met {ch.deadline.met}/"
                f"{ch.deadline.requests}",
                flush=True,
            )


if __name__ == "__main__":
    main()
