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


def _serve(args: argparse.Namespace) -> int:
    import logging
    from pathlib import Path

    import uvicorn

    from helpers.backend import default_data_dir
    from helpers.server.app import create_app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    api_keys = None
    if args.api_keys:
        try:
            lines = Path(args.api_keys).read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            print(f"workbook serve: cannot read --api-keys file: {exc}", file=sys.stderr)
            return EXIT_USAGE
        api_keys = {line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")}
        if not api_keys:
            print(f"workbook serve: {args.api_keys} lists no keys (one key per line).", file=sys.stderr)
            return EXIT_USAGE
    app = create_app(Path(args.data_dir or default_data_dir()), api_keys=api_keys)
    uvicorn.run(app, host=args.host, port=args.port, access_log=False, log_level="warning")
    return EXIT_OK


def _report(args: argparse.Namespace) -> int:
    import time

    from helpers.reports import ReportError, make_all, make_report, parse_value

    started = time.perf_counter()
    try:
        if args.all:
            paths = make_all(include_input=not args.no_input)
        elif args.notebook:
            parameters = {name: parse_value(value) for name, value in args.parameter}
            paths = [make_report(args.notebook, parameters, include_input=not args.no_input)]
        else:
            print("workbook report: name a notebook (for example 02_data_prep) or use --all.", file=sys.stderr)
            return EXIT_USAGE
    except ReportError as exc:
        print(f"workbook report: {exc}", file=sys.stderr)
        return EXIT_INVALID
    for path in paths:
        print(path)
    print(f"{len(paths)} report(s) in {time.perf_counter() - started:.0f} s")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="workbook", description="Fine-Tuning & Distillation Workbook tools.")
    commands = parser.add_subparsers(dest="command", required=True)
    validate = commands.add_parser("validate", help="check a fine-tuning JSONL file: verdict, tokens, stats, cost")
    validate.add_argument("file", help="path of the .jsonl file")
    validate.add_argument("--model", default=None, help="model to count tokens and cost for (default: gpt-4.1-mini)")
    validate.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    validate.set_defaults(handler=_validate)
    serve = commands.add_parser("serve", help="run the local OpenAI-compatible fine-tuning server")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    serve.add_argument("--port", type=int, default=8321)
    serve.add_argument("--data-dir", default=None, help="where files, jobs and models are kept (default: .workbook/server)")
    serve.add_argument("--api-keys", default=None, help="a file with one accepted API key per line (default: any key)")
    serve.set_defaults(handler=_serve)
    report = commands.add_parser("report", help="execute a notebook with parameters into an HTML report in reports/")
    report.add_argument("notebook", nargs="?", help="for example 02_data_prep")
    report.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="set a parameter (repeatable), for example -p DATASET_PATH my.csv")
    report.add_argument("--all", action="store_true", help="every notebook, with the course-sized parameters")
    report.add_argument("--no-input", action="store_true", help="hide the code cells in the HTML")
    report.set_defaults(handler=_report)
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
