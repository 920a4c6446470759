"""``pbrl annotate``: label segment pairs yourself on a local page (the server lives in :mod:`pbrl.annotate`)."""

from __future__ import annotations

import argparse


def cmd_annotate(args: argparse.Namespace) -> int:
    from pbrl.annotate.server import serve, start_session

    session = start_session(args.dataset, args.out, pairs=args.pairs, segment=args.segment, pairing=args.pairing,
                            seed=args.seed, candidates=args.candidates, size=args.size, fps=args.fps, group=args.group,
                            annotator=args.annotator, workers=args.workers)
    if args.prepare_only:
        session.close()
        print(f"prepared {len(session.query_set.segments())} videos in {session.video_dir}")
        return 0
    serve(session, args.host, args.port)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    an = sub.add_parser("annotate", help="label segment pairs yourself: a local page with the two segment videos side "
                        "by side and keys to answer; every answer is appended to --out at once (restart resumes)")
    an.add_argument("dataset", help="trajectory dataset (name in datasets/ or .h5 path)")
    an.add_argument("--pairs", type=int, required=True, help="answers each annotator gives")
    an.add_argument("--segment", type=int, required=True, help="segment length in steps")
    an.add_argument("--out", required=True, help="labels file (.jsonl, the format `pbrl data import-labels` reads); "
                    "its queries and videos live in OUT-stem.annotate/")
    an.add_argument("--port", type=int, default=8765, help="port (0: any free one; the URL is printed)")
    an.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    an.add_argument("--annotator", default="", help="name filled in on the page (each person can type their own)")
    an.add_argument("--group", type=int, default=0, help="annotator group written with every answer")
    an.add_argument("--pairing", default="uniform", choices=["uniform", "disagreement"],
                    help="disagreement: the next pair is where a reward-model ensemble refitted on the labels so far "
                    "disagrees most, among --candidates x --pairs uniform pairs")
    an.add_argument("--candidates", type=int, default=4, help="candidate pool per answer for --pairing disagreement")
    an.add_argument("--seed", type=int, default=0)
    an.add_argument("--size", type=int, default=192, help="video frame size in pixels")
    an.add_argument("--fps", type=int, default=30, help="video frame rate (steps shown per second)")
    an.add_argument("--workers", type=int, default=1, help="processes rendering the videos")
    an.add_argument("--prepare-only", action="store_true", help="render the videos and stop")
    an.set_defaults(func=cmd_annotate)
