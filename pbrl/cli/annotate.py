"""``pbrl annotate``: label segment pairs yourself on a local page (the server lives in :mod:`pbrl.annotate`)."""

from __future__ import annotations

import argparse

from pbrl.cli.common import int_at_least

MAX_PORT = 65535


def port_number(text: str) -> int:
    """``--port``: 0 (any free port) to 65535."""
    value = int_at_least(0)(text)
    if value > MAX_PORT:
        raise argparse.ArgumentTypeError(f"got {value}, expected an integer from 0 to {MAX_PORT}")
    return value


def annotator_name(text: str) -> str:
    """``--annotator``: the name the page fills in, held to what the server accepts from the page."""
    if not text:
        return text  # none: each person types their own
    from pbrl.annotate.log import RequestError, check_annotator

    try:
        return check_annotator(text)
    except RequestError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("request: field 'annotator': ")) from None


def cmd_annotate(args: argparse.Namespace) -> int:
    from pbrl.annotate.server import owns_labels, serve, start_session
    from pbrl.cli.data_formats import writable_out

    # before the folder or any video: a directory, an unwritable place or a file that is not this session's labels
    writable_out("--out", args.out, suffixes=(".jsonl",), owned=owns_labels)
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
    an.add_argument("--pairs", type=int_at_least(1), required=True, help="answers each annotator gives")
    an.add_argument("--segment", type=int_at_least(1), required=True, help="segment length in steps")
    an.add_argument("--out", required=True, help="labels file (.jsonl, the format `pbrl data import-labels` reads); "
                    "its queries and videos live in OUT-stem.annotate/")
    an.add_argument("--port", type=port_number, default=8765, help="port (0: any free one; the URL is printed)")
    an.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    an.add_argument("--annotator", type=annotator_name, default="",
                    help="name filled in on the page (each person can type their own)")
    an.add_argument("--group", type=int_at_least(0), default=0, help="annotator group written with every answer")
    an.add_argument("--pairing", default="uniform", choices=["uniform", "disagreement"],
                    help="disagreement: the next pair is where a reward-model ensemble refitted on the labels so far "
                    "disagrees most, among --candidates x --pairs uniform pairs")
    an.add_argument("--candidates", type=int_at_least(1), default=4,
                    help="candidate pool per answer for --pairing disagreement")
    an.add_argument("--seed", type=int_at_least(0), default=0)
    an.add_argument("--size", type=int_at_least(16), default=192, help="video frame size in pixels")
    an.add_argument("--fps", type=int_at_least(1), default=30, help="video frame rate (steps shown per second)")
    an.add_argument("--workers", type=int_at_least(1), default=1, help="processes rendering the videos")
    an.add_argument("--prepare-only", action="store_true", help="render the videos and stop")
    an.set_defaults(func=cmd_annotate)
