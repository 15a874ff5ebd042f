"""The ``workbook`` command line: validate, serve, check-device, stop, export, keys, queue, report, doctor (``workbook --help``)."""
from __future__ import annotations

import argparse
import json
import sys

from helpers.settings import DEFAULT_PORT

EXIT_OK, EXIT_INVALID, EXIT_USAGE = 0, 1, 2


def _validate(args: argparse.Namespace) -> int:
    from helpers.data.validate import validate_file

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
    from helpers.data.tokens import check_offline

    status = check_offline()
    try:
        from helpers.server import localmodels
    except ImportError:  # the core install alone: no server
        return status
    try:
        for line in localmodels.describe_device():
            print(f"local server: {line}")
    except (RuntimeError, ValueError) as exc:  # a WORKBOOK_DEVICE or WORKBOOK_PRECISION this machine cannot honour
        print(f"local server: {exc}", file=sys.stderr)
        return EXIT_INVALID
    from helpers.server import llamacpp

    print(f"export: {llamacpp.describe()}")
    return status


def read_api_keys(path: str) -> dict[str, str]:
    """``KEY [LABEL]`` per line (``#`` comments and blank lines ignored) -> {key: label}."""
    from pathlib import Path

    keys: dict[str, str] = {}
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        parts = line.split(None, 1)
        if not parts or parts[0].startswith("#"):
            continue
        if parts[0] in keys:
            raise ValueError(f"{path}, line {number}: the key is listed twice (each participant needs their own key).")
        keys[parts[0]] = parts[1].strip() if len(parts) > 1 else f"key {len(keys) + 1}"
    if not keys:
        raise ValueError(f"{path} lists no keys (one key per line, optionally followed by a name).")
    return keys


def _serve(args: argparse.Namespace) -> int:
    import logging
    from pathlib import Path

    import uvicorn

    from helpers.course.backend import default_data_dir
    from helpers.server.app import create_app, host_name
    from helpers.server.bases import ModelSourceError, brought_bases
    from helpers.server.state import LOOPBACK_NAMES, MIB, Limits

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        bases = brought_bases(args.model, args.models)
    except ModelSourceError as exc:
        print(f"workbook serve: cannot bring a model: {exc}", file=sys.stderr)
        return EXIT_USAGE
    api_keys = None
    if args.api_keys:
        try:
            api_keys = read_api_keys(args.api_keys)
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            print(f"workbook serve: cannot use --api-keys: {exc}", file=sys.stderr)
            return EXIT_USAGE
    if args.idle_timeout is not None and not args.idle_timeout > 0:
        print(f"workbook serve: --idle-timeout must be a number of minutes above 0, got {args.idle_timeout}.", file=sys.stderr)
        return EXIT_USAGE
    for name in ("max_upload_mb", "max_storage_mb", "max_jobs_per_key"):
        value = getattr(args, name)
        if value is not None and value < 1:
            print(f"workbook serve: --{name.replace('_', '-')} must be at least 1, got {value}.", file=sys.stderr)
            return EXIT_USAGE
    limits = Limits(max_upload_bytes=int(args.max_upload_mb * MIB),
                    max_storage_bytes=int(args.max_storage_mb * MIB) if args.max_storage_mb else None,
                    max_active_jobs=args.max_jobs_per_key, training_closed=args.training_closed)
    idle = args.idle_timeout * 60 if args.idle_timeout is not None else None
    named = frozenset(h.strip().lower().strip("[]") for h in (args.allowed_hosts or "").split(",") if h.strip())
    if host_name(args.host) in LOOPBACK_NAMES:
        allowed: frozenset[str] | None = LOOPBACK_NAMES | named
    else:
        if api_keys is None and not args.allow_open:
            print(f"workbook serve: --host {args.host} would open the server, and every learner's files, to the whole network with "
                  "no key needed. Give --api-keys FILE (make one with `workbook keys N`), or add --allow-open if that is "
                  "really meant.", file=sys.stderr)
            return EXIT_USAGE
        if api_keys is None:
            print(f"workbook serve: WARNING: --allow-open: anyone who can reach {args.host}:{args.port} can use this server "
                  "and read what others uploaded under the same key.", file=sys.stderr)
        allowed = LOOPBACK_NAMES | named if named else None
    if args.max_resident_models < 1:
        print(f"workbook serve: --max-resident-models must be at least 1, got {args.max_resident_models}.", file=sys.stderr)
        return EXIT_USAGE
    if args.engine != "vllm" and (args.vllm_url or args.vllm_base):
        print("workbook serve: --vllm-url and --vllm-base go with --engine vllm.", file=sys.stderr)
        return EXIT_USAGE
    data_dir = Path(args.data_dir or default_data_dir())
    engine = None
    if args.engine == "vllm":
        from helpers.pricing import catalogue
        from helpers.server.vllm_engine import VllmEngine, VllmUnavailable
        from helpers.settings import settings

        base = bases.resolve(args.vllm_base or catalogue.default_local_base().name)
        if base is None:
            print(f"workbook serve: --vllm-base {args.vllm_base!r} is not a model this server knows ({', '.join(bases.names())}).",
                  file=sys.stderr)
            return EXIT_USAGE
        try:
            engine = (VllmEngine.connect(base, args.vllm_url, settings().vllm_key.get_secret_value()) if args.vllm_url
                      else VllmEngine.start(base, data_dir / "vllm.log"))
        except VllmUnavailable as exc:
            print(f"workbook serve: cannot use vLLM: {exc}", file=sys.stderr)
            return EXIT_INVALID
    app = create_app(data_dir, api_keys=api_keys, limits=limits, idle_timeout_s=idle, allowed_hosts=allowed, bases=bases,
                     max_resident_models=args.max_resident_models, engine=engine)
    uvicorn.run(app, host=args.host, port=args.port, access_log=False, log_level="warning")
    return EXIT_OK


def _check_device(args: argparse.Namespace) -> int:
    from helpers.course.device_check import CheckFailed, run

    try:
        run(args.base, args.model, examples=args.examples, epochs=args.epochs, requests=args.requests, engine=args.engine)
    except CheckFailed as exc:
        print(f"workbook check-device: FAILED: {exc}", file=sys.stderr)
        return EXIT_INVALID
    print("workbook check-device: ok")
    return EXIT_OK


def _stop(args: argparse.Namespace) -> int:
    from helpers.course.backend import BackendUnavailable, stop_local_server

    try:
        print(f"workbook stop: {stop_local_server(args.port)}")
    except BackendUnavailable as exc:
        print(f"workbook stop: {exc}", file=sys.stderr)
        return EXIT_INVALID
    return EXIT_OK


def _export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from helpers.course.backend import default_data_dir, local_key
    from helpers.server.export import export_model
    from helpers.server.llamacpp import LlamaCppMissing

    target = args.out or args.target
    if not target or (args.out and args.target and args.out != args.target):
        print("workbook export: name one folder to write, with --out DIR (or as the second argument).", file=sys.stderr)
        return EXIT_USAGE
    data_dir = Path(args.data_dir) if args.data_dir else default_data_dir()
    try:
        folder = export_model(data_dir, local_key(), args.model, Path(target), format=args.format, quant=args.quant)
    except (LookupError, LlamaCppMissing, RuntimeError, OSError) as exc:
        print(f"workbook export: {exc.args[0] if isinstance(exc, LookupError | LlamaCppMissing | RuntimeError) else exc}", file=sys.stderr)
        return EXIT_INVALID
    files = ", ".join(sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")))
    print(f"workbook export: {args.model} -> {folder} as {args.format}: {files} (run it as its README.md says)")
    return EXIT_OK


def _keys(args: argparse.Namespace) -> int:
    import secrets

    if not 1 <= args.count <= 1000:
        print("workbook keys: give a count from 1 to 1000.", file=sys.stderr)
        return EXIT_USAGE
    print("# workshop keys: one per participant; give this file to `workbook serve --api-keys`")
    for i in range(1, args.count + 1):
        print(f"wb-{secrets.token_urlsafe(18)} {args.prefix}-{i:02d}")
    return EXIT_OK


def _queue(args: argparse.Namespace) -> int:
    import time

    import httpx

    url = f"http://127.0.0.1:{args.port}/queue"
    try:
        body = httpx.get(url, timeout=5).json()
    except (httpx.HTTPError, ValueError) as exc:
        print(f"workbook queue: no workbook server answers at {url} ({exc}). Run this on the server's machine.", file=sys.stderr)
        return EXIT_INVALID
    if "error" in body:
        print(f"workbook queue: {body['error']['message']}", file=sys.stderr)
        return EXIT_INVALID
    rows = ([body["running"]] if body["running"] else []) + body["waiting"]
    print(f"{len(rows)} job(s): {1 if body['running'] else 0} running, {len(body['waiting'])} waiting")
    for row in rows:
        eta = f"  ~{max(0, row['estimated_finish'] - int(time.time()))} s left" if row.get("estimated_finish") else ""
        where = "running" if row["position"] == 0 else f"#{row['position']}"
        print(f"{where:>8}  {row['key']:<16} {row['id']}  {row['status']:<17} {row['model']}{eta}")
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
    from helpers.server.export import FORMATS, QUANTS

    parser = argparse.ArgumentParser(prog="workbook", description="Fine-Tuning & Distillation Workbook tools.")
    commands = parser.add_subparsers(dest="command", required=True)
    validate = commands.add_parser("validate", help="check a fine-tuning JSONL file: verdict, tokens, stats, cost")
    validate.add_argument("file", help="path of the .jsonl file")
    validate.add_argument("--model", default=None, help="model to count tokens and cost for (default: gpt-4.1-mini)")
    validate.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    validate.set_defaults(handler=_validate)
    serve = commands.add_parser("serve", help="run the local OpenAI-compatible fine-tuning server")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    serve.add_argument("--port", type=int, default=DEFAULT_PORT)
    serve.add_argument("--allowed-hosts", default=None, metavar="NAMES",
                       help="comma-separated host names clients address this server by (a workshop server's name or address); "
                       "requests addressed to any other name are refused (default: loopback names on a loopback server, "
                       "any name on another --host)")
    serve.add_argument("--allow-open", action="store_true",
                       help="let a non-loopback --host run without --api-keys (anyone on the network may use it)")
    serve.add_argument("--data-dir", default=None, help="where files, jobs and models are kept (default: .workbook/server)")
    serve.add_argument("--model", action="append", default=[], metavar="NAME=SOURCE",
                       help="also train and serve your own model as NAME (repeatable); SOURCE is a folder in Hugging Face's "
                       "format (config, safetensors, a tokenizer with a chat template), a .gguf file, or a hub id (only "
                       "where the machine may download)")
    serve.add_argument("--models", default=None, metavar="FILE",
                       help="a file of NAME=SOURCE lines, as --model (the WORKBOOK_MODELS setting names one too)")
    serve.add_argument("--max-resident-models", type=int, default=2, metavar="N",
                       help="base models kept loaded at once; the least recently used idle one is unloaded to load "
                       "another (default: 2)")
    serve.add_argument("--api-keys", default=None, help="a file with one accepted key per line, optionally followed by a "
                       "name shown in `workbook queue` (default: any key)")
    serve.add_argument("--max-upload-mb", type=float, default=512, help="largest file one upload may be (default: 512)")
    serve.add_argument("--max-storage-mb", type=float, default=None, help="all files of one key together (default: no limit)")
    serve.add_argument("--max-jobs-per-key", type=int, default=None,
                       help="unfinished jobs one key may have; more get 429 with Retry-After (default: no limit)")
    serve.add_argument("--training-closed", action="store_true",
                       help="refuse new fine-tuning jobs as OpenAI refuses them after its wind-down (403 training_not_available); "
                            "to rehearse it. Everything else works.")
    serve.add_argument("--idle-timeout", type=float, default=None, metavar="MINUTES",
                       help="stop after this many minutes with no request and no running or waiting job (default: never; "
                       "a server that the notebooks start stops after WORKBOOK_IDLE_MINUTES, default 30)")
    serve.add_argument("--engine", choices=("local", "vllm"), default="local",
                       help="what answers chat requests: local (default: the server's own process) or vllm (vLLM, started "
                       "on loopback from the environment `make vllm` makes; training stays in the server)")
    serve.add_argument("--vllm-url", default=None, metavar="URL",
                       help="with --engine vllm: use the vLLM already running at URL (its key, if any, in WORKBOOK_VLLM_KEY) "
                       "instead of starting one")
    serve.add_argument("--vllm-base", default=None, metavar="NAME",
                       help="with --engine vllm: the base model vLLM runs (default: the shipped one; or a NAME given with --model)")
    serve.set_defaults(handler=_serve)
    check = commands.add_parser("check-device", help="prove this machine (a GPU above all) end to end: a server of its own "
                                "trains a small job, the tuned model answers held-out requests; prints the device, dtype, "
                                "job time, tokens/s and peak memory")
    check.add_argument("--base", default="gpt-4.1-mini", help="the model to train (default: the shipped one; or a NAME "
                       "given with --model)")
    check.add_argument("--model", action="append", default=[], metavar="NAME=SOURCE", help="bring a model, as workbook serve does")
    check.add_argument("--examples", type=int, default=32, help="course examples to train on (default: 32)")
    check.add_argument("--epochs", type=int, default=1)
    check.add_argument("--requests", type=int, default=16, help="held-out requests answered at once (default: 16)")
    check.add_argument("--engine", choices=("local", "vllm"), default="local",
                       help="what answers them: the server's own process (default) or vLLM (`make vllm` first)")
    check.set_defaults(handler=_check_device)
    stop = commands.add_parser("stop", help="stop the local server on this machine at once (a running job resumes at the next start)")
    stop.add_argument("--port", type=int, default=None, help=f"default: WORKBOOK_PORT or {DEFAULT_PORT}")
    stop.set_defaults(handler=_stop)
    export = commands.add_parser("export", help="write a model the local server fine-tuned (yours: the notebooks' key) into a "
                                 "folder: a peft adapter, a merged transformers model, or GGUF for llama.cpp and Ollama")
    export.add_argument("model", help="the fine-tuned model's name, ft:...")
    export.add_argument("target", nargs="?", default=None, help="the folder to write (made if missing); or --out")
    export.add_argument("--out", default=None, metavar="DIR", help="the folder to write (made if missing)")
    export.add_argument("--format", choices=FORMATS, default="peft",
                        help="peft: the adapter (transformers + peft, vLLM); merged: one transformers folder, no peft; "
                             "gguf: llama.cpp / Ollama files with a Modelfile (default: peft)")
    export.add_argument("--quant", choices=QUANTS, default="f16", help="gguf only: f16 (closest to the server), q8_0, q4_k_m")
    export.add_argument("--data-dir", default=None, help="the server's data folder (default: WORKBOOK_SERVER_DIR or .workbook/server)")
    export.set_defaults(handler=_export)
    keys = commands.add_parser("keys", help="print COUNT new workshop keys, one per line with a name (for serve --api-keys)")
    keys.add_argument("count", type=int)
    keys.add_argument("--prefix", default="participant", help="name stem: participant-01, participant-02, ...")
    keys.set_defaults(handler=_keys)
    queue = commands.add_parser("queue", help="show the local server's fine-tuning queue (run on the server's machine)")
    queue.add_argument("--port", type=int, default=DEFAULT_PORT)
    queue.set_defaults(handler=_queue)
    report = commands.add_parser("report", help="execute a notebook with parameters into an HTML report in reports/")
    report.add_argument("notebook", nargs="?", help="for example 02_data_prep")
    report.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="set a parameter (repeatable), for example -p DATASET_PATH my.csv")
    report.add_argument("--all", action="store_true", help="every notebook, with the course-sized parameters")
    report.add_argument("--no-input", action="store_true", help="hide the code cells in the HTML")
    report.set_defaults(handler=_report)
    doctor = commands.add_parser("doctor", help="check the offline tokenizer set-up; print the device, dtype and kernels the "
                                 "local server will use")
    doctor.set_defaults(handler=_doctor)
    return parser


def main(argv: list[str] | None = None) -> int:
    from helpers.data.tokens import ensure_offline_encodings

    ensure_offline_encodings()  # tiktoken offline, for this process and the kernels and servers it starts
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return int(exc.code or 0)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
