"""The ``workbook`` command line: ``workbook validate FILE [--model M] [--json]``."""
from __future__ import annotations

import argparse
import json
import sys

EXIT_OK, EXIT_INVALID, EXIT_USAGE = 0, 1, 2


def _validate(args: argparse.Namespace) -> int:
    from helpers.validate import validate_file

    try:
        report = validate_file(args.file, model=args.model)
    except (FileNotFoundError, IsADirectoryError, PermissionError, ValueError) as exc:
        print(f"workbook validate: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        print(json.dumps(report.as_dict(), indent=2, ensure_ascii=False))
    else:
        print(report.summary())
    return EXIT_OK if report.ok else EXIT_INVALID


def _doctor(args: argparse.Namespace) -> int:
    from helpers.tokens import check_offline

    return check_offline()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="workbook", description="Fine-Tuning & Distillation Workbook tools.")
    commands = parser.add_subparsers(dest="command", required=True)
    validate = commands.add_parser("validate", help="check a fine-tuning JSONL file: verdict, tokens, stats, cost")
    validate.add_argument("file", help="path of the .jsonl file")
    validate.add_argument("--model", default=None, help="model to count tokens and cost for (default: gpt-4.1-mini)")
    validate.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    validate.set_defaults(handler=_validate)
    doctor = commands.add_parser("doctor", help="check the offline tokenizer set-up")
    doctor.set_defaults(handler=_doctor)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return int(exc.code or 0)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
