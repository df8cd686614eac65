"""``facegs validate DIR``: check subject directories and print a table of problems (exit 1 on errors)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from facegs.ingest.validate import ERROR, WARNING, Problem, validate_tree


def format_report(report: dict[str, list[Problem]]) -> str:
    """A table (subject, view, field, severity, message) followed by a summary line."""
    rows = [
        (p.subject or key, p.view or "-", p.field or "-", p.severity, p.message + (f" [{p.path}]" if p.path else ""))
        for key, probs in report.items()
        for p in probs
    ]
    n_err = sum(1 for probs in report.values() for p in probs if p.severity == ERROR)
    n_warn = sum(1 for probs in report.values() for p in probs if p.severity == WARNING)
    bad = sum(1 for probs in report.values() if any(p.severity == ERROR for p in probs))
    lines = []
    if rows:
        head = ("subject", "view", "field", "severity", "message")
        widths = [max(len(r[i]) for r in [head, *rows]) for i in range(4)]
        fmt = "  ".join(f"{{:<{w}}}" for w in widths) + "  {}"
        lines.append(fmt.format(*head))
        lines.append(fmt.format(*("-" * w for w in widths), "-" * 7))
        lines.extend(fmt.format(*r) for r in rows)
        lines.append("")
    lines.append(
        f"{len(report)} subject(s) checked: {len(report) - bad} valid, {bad} with errors; "
        f"{n_err} error(s), {n_warn} warning(s)"
    )
    return "\n".join(lines)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "validate",
        help="check subject directories (manifest, cameras, files, label values); non-zero exit on errors",
        description=(
            "Check every subject directory at or below DIR: manifest schema, cameras (pinhole K, proper "
            "world-to-camera rotations), files present, decodable and of the declared size, label classes in "
            "range, duplicate ids, too few views, ids against the identifier rule, paths that leave the subject "
            "directory. Prints a table and a summary; exits 1 when any error is found."
        ),
    )
    p.add_argument("dir", metavar="DIR", help="a subject directory or a tree of them")
    p.add_argument("--min-views", type=int, default=4, help="fewest views a subject may have (default 4)")
    p.add_argument("--json", metavar="REPORT", help="also write the report as JSON to this file")
    p.add_argument("--quick", action="store_true", help="read image headers only (no pixel decoding, no label-value check)")
    p.add_argument("--allow-external-paths", action="store_true",
                   help="accept manifest paths outside the subject directory (absolute, '..', links out); by default "
                   "they are errors")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    report = validate_tree(args.dir, check_images=not args.quick, min_views=args.min_views,
                           allow_external_paths=args.allow_external_paths)
    print(format_report(report))
    n_err = sum(1 for probs in report.values() for p in probs if p.severity == ERROR)
    if args.json:
        doc = {
            "root": str(Path(args.dir).resolve()),
            "subjects": {k: [p.as_dict() for p in probs] for k, probs in report.items()},
            "summary": {
                "subjects": len(report),
                "subjects_with_errors": sum(1 for probs in report.values() if any(p.severity == ERROR for p in probs)),
                "errors": n_err,
                "warnings": sum(1 for probs in report.values() for p in probs if p.severity == WARNING),
            },
        }
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    sys.stdout.flush()
    return 1 if n_err else 0
