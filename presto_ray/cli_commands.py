"""The ``presto-ray`` commands as a table: ``COMMANDS`` holds one ``Command`` per subcommand (name,
help, handler, its arguments), and ``cli.build_parser`` builds argparse from it. Adding a command is
a handler here plus one entry in the table. Argument groups several commands share (``CONFIG``,
``ADDRESS``, ``STORAGE_PATH``, ``TEACHER``) are declared once below.

A handler takes the parsed arguments and returns the exit code; an input error it raises
(ConfigError, ExportError, ValueError, OSError) becomes ``cli.main``'s one-line error with exit 2.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable


class Arg:
    """One ``add_argument`` call, declared now and made when the parser is built:
    ``Arg("--out", default="eval", help="...")``."""

    def __init__(self, *flags: str, **options) -> None:
        self.flags, self.options = flags, options


@dataclass(frozen=True)
class Command:
    """A subcommand: its arguments and the handler that runs it, or, for a command with kinds
    (``sweep layer-drop``), its ``subcommands`` (chosen one is stored in ``args.<name>``)."""

    name: str
    help: str
    handler: Callable[[argparse.Namespace], int] | None = None
    args: tuple[Arg, ...] = ()
    description: str | None = None
    subcommands: tuple[Command, ...] = ()


def _int_at_least(minimum: int, what: str):
    """An argparse type: an integer >= ``minimum`` (``what`` names such counts in --help)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: '{text}'") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    parse.__doc__ = what
    return parse


_positive = _int_at_least(1, "a count of steps, clips, ...")
_non_negative = _int_at_least(0, "warm-up repeats, Ray workers where 0 means in-process")


class _DistilledMethods:
    """The choices of ``--method``: the registry's distilled methods, imported only when argparse
    checks a value or prints help (the registry pulls in torch; the parser itself stays light)."""

    def _names(self) -> tuple[str, ...]:
        from presto_ray.distill.methods import distilled_methods

        return distilled_methods()

    def __iter__(self):
        return iter(self._names())

    def __contains__(self, name: object) -> bool:
        return name in self._names()

    def __len__(self) -> int:
        return len(self._names())


def _positive_list(text: str) -> tuple[int, ...]:
    """An argparse type: comma-separated integers, each >= 1 ("4,8"; "" for none)."""
    return tuple(_positive(v.strip()) for v in text.split(",") if v.strip())


# -- argument groups shared by several commands ------------------------------------------------

ADDRESS = Arg("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or an in-process cluster)")
CONFIG = (
    Arg("--config", default="tiny", help="YAML config file or preset name (tiny, small, paper); default tiny"),
    Arg("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides, e.g. model.depth=8"),
    ADDRESS,
)
STORAGE_PATH = Arg("--storage-path", help="overrides run.storage_path (local path, file:// or s3://)")
TEACHER = Arg("--teacher", help="overrides distill.teacher: the teacher's run, step or export folder")


# -- helpers of the handlers -------------------------------------------------------------------

def _load(args) -> "PrestoConfig":  # noqa: F821
    from presto_ray.config import load_config

    overrides = list(args.overrides)
    if getattr(args, "run_name", None):
        overrides.append(f"run.name={args.run_name}")
    if getattr(args, "storage_path", None):
        overrides.append(f"run.storage_path={args.storage_path}")
    cfg = load_config(args.config, overrides)
    paths = {"--out": getattr(args, "out", None)}
    if hasattr(args, "storage_path"):  # the commands that write a run folder
        paths["run.storage_path"] = cfg.run.storage_path
    _refuse_job_local_paths(paths)
    return cfg


def _refuse_job_local_paths(paths: dict[str, str | None]) -> None:
    """Inside a ``ray job submit`` job the working directory is Ray's temporary copy of the upload:
    a relative path there is lost when the job ends, and a resubmission would start over."""
    import os

    if "RAY_JOB_CONFIG_JSON_ENV_VAR" not in os.environ:
        return
    for key, path in paths.items():
        if path and "://" not in path and not os.path.isabs(path):
            raise ValueError(f"{key}={path!r} is relative: inside a Ray job it would land in the job's temporary "
                             "copy of the working dir and be lost; give an absolute path or an s3:// URI")


# -- handlers ----------------------------------------------------------------------------------

def cmd_train_teacher(args) -> int:
    from presto_ray.train.teacher import train_teacher

    cfg = _load(args)
    result = train_teacher(cfg, address=args.address)
    print(f"checkpoint: {result.checkpoint.path if result.checkpoint else 'none'}")
    return 0


def cmd_distill(args) -> int:
    from presto_ray.train.distill import distill

    for key, value in (("distill.method", args.method), ("distill.teacher", args.teacher), ("distill.init", args.init)):
        if value:
            args.overrides.append(f"{key}={value}")
    cfg = _load(args)
    if not args.run_name and not any(o.startswith("run.name=") for o in args.overrides):
        cfg.run.name = cfg.distill.method  # never the teacher's run name from the preset
    result = distill(cfg, address=args.address)
    print(f"checkpoint: {result.checkpoint.path if result.checkpoint else 'none'}")
    return 0


def cmd_benchmark(args) -> int:
    import json

    from presto_ray.eval.latency import benchmark

    doc = benchmark(args.teacher, args.student, repeats=args.repeats, warmup=args.warmup, seconds=args.seconds,
                    teacher_steps=args.teacher_steps, student_steps=args.student_steps)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2))
    print(f"wrote {out}")
    return 0


def cmd_report(args) -> int:
    from presto_ray.eval.report import write_report

    print(write_report(args.out, latency=args.latency, metrics=args.metrics, runs=args.run, audio=args.audio,
                       title=args.title))
    if args.results_md:
        import json

        from presto_ray.eval.targets import results_markdown

        if len(args.metrics) != 1:
            raise ValueError("--results-md needs exactly one --metrics (a quickstart's metrics.json)")
        doc = json.loads(Path(args.metrics[0]).read_text())
        if not isinstance(doc, dict) or "entries" not in doc:
            raise ValueError(f"{args.metrics[0]} is not a quickstart metrics.json (no 'entries')")
        Path(args.results_md).write_text(results_markdown(doc, title=args.title, command=args.made_by,
                                                          date=time.strftime("%Y-%m-%d")))
        print(args.results_md)
    return 0


def cmd_evaluate(args) -> int:
    import json

    from presto_ray.eval.evaluate import Sampling, evaluate
    from presto_ray.train.cluster import ensure_ray

    _refuse_job_local_paths({"--out": args.out})
    ensure_ray(args.address, num_cpus=args.num_workers + 1)
    if args.budget_schedule is not None:
        from presto_ray.distill.budget import BudgetSchedule

        args.budget_schedule = BudgetSchedule.parse(args.budget_schedule).to_json()
    sampling = Sampling(role=args.role, sampler=args.sampler, steps=args.steps, cfg_scale=args.cfg_scale,
                        cfg_rescale=args.cfg_rescale, s_churn=args.s_churn, schedule=args.budget_schedule)
    metrics = evaluate(args.checkpoint, args.data, args.out, n=args.num_samples, sampling=sampling,
                       reference=args.reference or None, batch_size=args.batch_size, seed=args.seed,
                       mmd_bandwidth=args.mmd_bandwidth,
                       mmd_scale=args.mmd_scale, num_workers=args.num_workers, gpus_per_worker=args.gpus_per_worker,
                       clap=args.clap)
    print(json.dumps({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, indent=2))
    return 0


def cmd_prepare(args) -> int:
    from presto_ray.data.prepare import prepare
    from presto_ray.train.cluster import ensure_ray

    if args.hours is not None:
        args.overrides.append(f"prepare.hours={args.hours}")
    if args.items is not None:
        args.overrides.append(f"prepare.items={args.items}")
    cfg = _load(args)
    ensure_ray(args.address)
    manifests = prepare(cfg, args.out)
    for split, m in manifests.items():
        print(f"{split}: {m.num_rows} rows in {len(m.files)} files -> {args.out.rstrip('/')}/{split}")
    print(f"train with: presto-ray train-teacher --config {args.config} data.source=shards "
          f"data.uri={args.out.rstrip('/')}/train")  # prepare raised if no train split was produced
    return 0


def cmd_generate(args) -> int:
    from presto_ray.generate import Prompt, generate_files, load_prompts

    prompts = [Prompt(t, args.bpm, args.seconds, args.seed + i) for i, t in enumerate(args.prompt)]
    if args.prompts_file:  # file seeds continue after the --prompt seeds
        prompts += [Prompt(p.text, p.bpm, p.seconds, p.seed + args.seed + len(prompts))
                    for p in load_prompts(args.prompts_file)]
    if not prompts:
        print("presto-ray generate: give --prompt TEXT or --prompts-file FILE", file=sys.stderr)
        return 2
    from presto_ray.distill.budget import BudgetSchedule

    schedule = BudgetSchedule.parse(args.budget_schedule) if args.budget_schedule else None
    paths = generate_files(args.checkpoint, prompts, args.out, role=args.role, budget_schedule=schedule, steps=args.steps,
                           cfg_scale=args.cfg_scale, cfg_rescale=args.cfg_rescale, batch_size=args.batch_size)
    for p in paths:
        print(p)
    return 0


def cmd_validate(args) -> int:
    from presto_ray.data.validate import inspect_shards

    report = inspect_shards(args.data)
    print(report.table())
    for problem in report.problems:
        print(f"  - {problem}")
    return 0 if report.ok else 2


def cmd_export(args) -> int:
    from presto_ray.train.export import copy_export

    print(copy_export(args.checkpoint, args.out))
    return 0


def cmd_quickstart(args) -> int:
    from presto_ray.quickstart import quickstart

    from presto_ray.quickstart.plan import PLANS

    command = " ".join(["presto-ray quickstart", f"--config {args.config}", f"--plan {args.plan}", f"--out {args.out}",
                        *(["--with-baselines"] if args.with_baselines else []), *args.overrides])
    quickstart(_load(args), Path(args.out), plan=PLANS[args.plan], with_baselines=args.with_baselines,
               address=args.address, command=command, cfg_name=Path(args.config).stem)
    return 0


def cmd_sweep_layer_drop(args) -> int:
    from presto_ray.sweep.layer_drop import layer_drop_sweep, load_space

    _refuse_job_local_paths({"--out": args.out})
    doc = layer_drop_sweep(args.checkpoint, args.data, load_space(args.space), args.out, address=args.address)
    chosen = doc["trials"][doc["chosen"]]
    print(f"chosen schedule {chosen['label']}: edges {chosen['edges']}, budgets {chosen['budgets']}, "
          f"KAD {chosen['kad']:.2f} [{chosen['kad_ci'][0]:.2f}, {chosen['kad_ci'][1]:.2f}], "
          f"{chosen['blocks_per_sample']:.0f} blocks per sample")
    print(f"export with that schedule: {doc['export']}")
    return 0


def cmd_sweep_teacher_sampler(args) -> int:
    from presto_ray.eval.sampler_search import grid, search_table, search_teacher_sampler
    from presto_ray.train.cluster import ensure_ray

    ensure_ray(args.address)
    doc = search_teacher_sampler(args.checkpoint, args.data, args.out,
                                 grid(tuple(args.steps), tuple(args.cfg_scales), tuple(args.churns)),
                                 n=args.num_samples, reference=args.reference or None,
                                 batch_size=args.batch_size, seed=args.seed, store=not args.no_store)
    print(search_table(doc))
    print(f"chosen: {doc['trials'][doc['chosen']]['label']}" + ("" if args.no_store else f", stored in {doc['export']}"))
    return 0


def cmd_sweep_loss_weights(args) -> int:
    from presto_ray.sweep.loss_weights import load_space, loss_weight_sweep

    if args.teacher:
        args.overrides.append(f"distill.teacher={args.teacher}")
    cfg = _load(args)
    doc = loss_weight_sweep(cfg, load_space(args.space), cfg.run.storage_path, args.name, address=args.address)
    print(f"best trial {doc['best_trial']} ({doc['best_value']}); results {doc['results']}; "
          f"best config {doc['best_config']}")
    if doc["missing_resources"]:
        print(f"warning: the cluster has not got back {doc['missing_resources']}", file=sys.stderr)
    return 0


# -- the table: one entry per command, in the order --help lists them --------------------------

SWEEPS: tuple[Command, ...] = (
    Command("layer-drop", "search sigma -> budget schedules of a trained presto-l/presto-ls model; writes the Pareto "
            "table/plot and an export carrying the chosen schedule", cmd_sweep_layer_drop, args=(
        Arg("--checkpoint", required=True, help="export, step or run folder of the layer-dropping student"),
        Arg("--data", required=True, help="held-out shard set whose prompts and audio score each schedule"),
        Arg("--space", default="tuning/layer_drop.yaml", help="search space file (default tuning/layer_drop.yaml)"),
        Arg("--out", required=True, help="output folder or s3:// URI (trials.csv, pareto.*, export/, tune/)"),
        ADDRESS)),
    Command("teacher-sampler", "choose the teacher's default sampler (Heun steps x CFG x churn) by KAD on held-out "
            "prompts and store it in its export (sampler.json)", cmd_sweep_teacher_sampler, args=(
        Arg("--checkpoint", required=True, help="export, step or run folder of the teacher"),
        Arg("--data", required=True, help="held-out shard set whose prompts score each setting"),
        Arg("--reference", action="append", default=[], metavar="DATA",
            help="reference shard set(s) (repeatable; default --data)"),
        Arg("--out", required=True, help="folder for search.json and each setting's metrics.json"),
        Arg("--steps", type=_positive, nargs="+", default=[8, 16, 32, 64]),
        Arg("--cfg-scales", type=float, nargs="+", default=[1.0, 2.0, 4.0]),
        Arg("--churns", type=float, nargs="+", default=[0.0]),
        Arg("-n", "--num-samples", type=_positive, default=64, help="clips per setting (default 64)"),
        Arg("--batch-size", type=_positive, default=16),
        Arg("--seed", type=int, default=10_000),
        Arg("--no-store", action="store_true", help="report the choice without writing it into the export"),
        ADDRESS)),
    Command("loss-weights", "search Presto-S loss weights, learning rates and noise distributions; each trial a Ray "
            "Train run, ASHA stopping poor ones", cmd_sweep_loss_weights, args=(
        *CONFIG,
        TEACHER,
        Arg("--space", default="tuning/loss_weights.yaml", help="search space file (default tuning/loss_weights.yaml)"),
        Arg("--storage-path", help="where the sweep goes (default run.storage_path); local path or s3://"),
        Arg("--name", default="loss-weights",
            help="the sweep's name: <storage>/<name>/ (results.csv, best_config.yaml)"))),
)

COMMANDS: tuple[Command, ...] = (
    Command("train-teacher", "train the EDM teacher on Ray Train + DeepSpeed (resumes by run name)",
            cmd_train_teacher, args=(*CONFIG, Arg("--run-name", help="overrides run.name"), STORAGE_PATH)),
    Command("distill", "distil the teacher: presto-s, presto-l, presto-ls or a baseline (resumes by run name)",
            cmd_distill,
            description="Distil a trained teacher into a few-step (presto-s, dmd2, cd), shallower (presto-l, ase) or "
                        "both (presto-ls: give --init, a presto-l run) student. The student's export "
                        "(generator.safetensors + config with its sampler defaults and budget schedule) lands in "
                        "every checkpoint's export/.", args=(
        *CONFIG,
        Arg("--method", choices=_DistilledMethods(),
            help="overrides distill.method (default presto-s)"),
        TEACHER,
        Arg("--init", help="overrides distill.init: the presto-l run/export presto-ls starts from"),
        Arg("--run-name", help="overrides run.name (default: the method's name)"),
        STORAGE_PATH)),
    Command("benchmark", "batch-1 latency of a teacher and its students side by side -> latency.json", cmd_benchmark,
            description="Times text encoding, sampling and decoding of one clip (median of repeats after warm-up, "
                        "device synchronised) for the teacher at its default sampler and at --teacher-steps, and for "
                        "each student at --student-steps (few-step students) or with and without its budget schedule "
                        "(layer students), all in one run. NFE and the share of blocks run are counted.", args=(
        Arg("--teacher", required=True, help="the teacher's export, step or run folder"),
        Arg("--student", action="append", default=[], help="a student's export, step or run folder (repeatable)"),
        Arg("--out", default="latency.json", help="where to write latency.json (default ./latency.json)"),
        Arg("--seconds", type=float, help="clip length (default: the training clip length)"),
        Arg("--repeats", type=_positive, default=5),
        Arg("--warmup", type=_non_negative, default=1),
        Arg("--teacher-steps", type=_positive_list, default="4,8",
            help="extra teacher step counts, comma-separated (default 4,8)"),
        Arg("--student-steps", type=_positive_list, default="1,2,4", help="few-step student step counts (default 1,2,4)"))),
    Command("report", "fold latency.json, metrics.json, training curves and audio into report.html", cmd_report, args=(
        Arg("--latency", action="append", default=[], help="a latency.json (repeatable)"),
        Arg("--metrics", action="append", default=[], help="a metrics.json (repeatable)"),
        Arg("--run", action="append", default=[], help="a run folder whose TensorBoard curves to plot (repeatable)"),
        Arg("--audio", action="append", default=[], help="a folder of WAV files to show and play (repeatable)"),
        Arg("--out", default="report.html", help="output file (default ./report.html)"),
        Arg("--title", default="presto_ray report"),
        Arg("--results-md", help="also write this markdown file (e.g. docs/results.md) from the one --metrics "
                                 "document of a quickstart run: the table and the paper's targets checked"),
        Arg("--made-by", default="presto-ray quickstart", help="with --results-md: the command that made the runs"))),
    Command("evaluate", "generate for held-out prompts, embed with musicnn -> metrics.json", cmd_evaluate,
            description="Generates N clips for the held-out prompts of a shard set (prompts repeat with new seeds), "
                        "embeds generated audio and the reference latents decoded by the codec with musicnn, and "
                        "writes metrics.json (kad, the primary metric, mmd, fad where N allows, precision, density, "
                        "recall, coverage, each with a 95% bootstrap interval <name>_ci; the noise floor floor_kad; "
                        "tempo_err_bpm, key_acc, ...) and the audio to --out.", args=(
        Arg("--checkpoint", required=True, help="export, step or run folder of the model to evaluate"),
        Arg("--data", required=True, help="held-out shard set (e.g. data/tiny/valid; local or s3://)"),
        Arg("--reference", action="append", default=[], metavar="DATA",
            help="shard set(s) whose latents, decoded by the codec, are the reference and the noise-floor "
                 "sample (repeatable; default --data). Give enough clips: at least 2 x N"),
        Arg("--out", default="eval", help="output folder (metrics.json, audio/)"),
        Arg("-n", "--num-samples", type=_positive, default=32, help="clips to generate (default 32)"),
        Arg("--role", choices=["auto", "teacher"], default="auto",
            help="teacher: evaluate the teacher's weights of a student's export (e.g. as its undistilled "
                 "control under --sampler pingpong)"),
        Arg("--sampler", choices=["teacher", "pingpong"], help="sampler (default: the role's own)"),
        Arg("--steps", type=_positive, help="sampler steps (default from the checkpoint)"),
        Arg("--cfg-scale", type=float, help="CFG scale (teacher sampler; ping-pong only with --role teacher)"),
        Arg("--cfg-rescale", type=float, help="guidance rescale in [0, 1] of the CFG (default from the checkpoint: "
                                              "sampler.cfg_rescale)"),
        Arg("--s-churn", type=float, help="EDM churn of the teacher sampler (default from the checkpoint)"),
        Arg("--budget-schedule", help='sigma -> budget schedule as JSON, e.g. \'{"edges": [1], "budgets": [6, 3]}\''),
        Arg("--batch-size", type=_positive, default=8),
        Arg("--seed", type=int, default=0),
        Arg("--mmd-bandwidth", type=float, default=10.0),
        Arg("--mmd-scale", type=float, default=1000.0),
        Arg("--num-workers", type=_non_negative, default=0,
            help="generate on this many Ray actors (default 0: in this process)"),
        Arg("--gpus-per-worker", type=float, default=0.0),
        Arg("--clap", metavar="PATH", help="folder of a CLAP model (Hugging Face layout, safetensors): adds "
                                           "fad_clap, mmd_clap and clap_score"),
        ADDRESS)),
    Command("prepare", "render the music21 corpus with FluidSynth and write Parquet latent shards", cmd_prepare, args=(
        *CONFIG,
        Arg("--out", required=True, help="output folder or s3:// prefix; splits go to <out>/{train,valid,test}"),
        Arg("--hours", type=float, help="overrides prepare.hours (audio to render)"),
        Arg("--items", type=_positive, help="overrides prepare.items (number of clips; wins over hours)"))),
    Command("generate", "prompt(s) -> WAV from an exported model or checkpoint", cmd_generate, args=(
        Arg("--checkpoint", required=True, help="export folder, checkpoint step_XXXXXXXX folder, or run folder "
                                                "(newest checkpoint); local path, file:// or s3://"),
        Arg("--prompt", action="append", default=[], help="caption (repeatable)"),
        Arg("--prompts-file", help=".txt (one caption per line) or .jsonl (prompt, bpm, seconds, seed)"),
        Arg("--bpm", type=float, help="tempo for --prompt captions"),
        Arg("--seconds", type=float, help="length (default: the training clip length)"),
        Arg("--seed", type=int, default=0,
            help="noise seed of the first prompt; later prompts count up (file seeds are offset by it)"),
        Arg("--steps", type=_positive, help="sampler steps (default from the checkpoint: sampler.steps for the "
                                            "teacher and layer students, distill.student_steps for few-step students)"),
        Arg("--cfg-scale", type=float, help="classifier-free guidance scale (teacher)"),
        Arg("--cfg-rescale", type=float, help="guidance rescale in [0, 1] (default from the checkpoint: sampler.cfg_rescale)"),
        Arg("--role", default="auto", help="exported role to sample: auto (the distilled generator if present, else "
                                           "teacher), teacher or generator"),
        Arg("--budget-schedule", metavar="JSON",
            help='replace the layer-budget schedule, e.g. \'{"edges": [0.5, 5], "budgets": [6, 4, 3]}\' '
                 "(sigma bin edges ascending; budgets per bin)"),
        Arg("--batch-size", type=_positive, default=8),
        Arg("--out", default="generated", help="output folder for WAV files"))),
    Command("validate", "check a shard set against its manifest: per-file table, exit 2 when anything is wrong",
            cmd_validate,
            description="Reads every file of the shard set once and checks it against manifest.json: presence, size, "
                        "sha256, schema and fixed shapes, row counts, NaN/Inf in latents and text states, empty "
                        "captions, repeated ids and the latent statistics. Prints one line per file and every "
                        "problem; exit 0 when clean, 2 otherwise.", args=(
        Arg("data", metavar="DATA", help="shard set folder (e.g. data/tiny/train; local path, file:// or s3://)"),)),
    Command("export", "copy a checkpoint's safetensors export to a folder or bucket", cmd_export, args=(
        Arg("--checkpoint", required=True, help="checkpoint step folder or run folder"),
        Arg("--out", required=True, help="destination folder (local path, file:// or s3://)"))),
    Command("quickstart", "the embedded default end to end on this machine", cmd_quickstart, args=(
        *CONFIG,
        Arg("--out", default="quickstart", help="output folder (default ./quickstart)"),
        Arg("--with-baselines", action="store_true",
            help="also distil, evaluate and benchmark the dmd2, ase and cd baselines"),
        Arg("--plan", choices=["quickstart", "reference"], default="quickstart",
            help="stage sizes: quickstart (minutes on a laptop CPU, the default) or reference (the reference "
                 "experiment of docs/results.md, meant for --config small with train.use_gpu=true on a GPU "
                 "machine: 2000 generator updates per student, 1024 clips per model; days on a CPU)"))),
    Command("sweep", "Ray Tune sweeps: layer-drop schedules (inference) or Presto-S loss weights (training)",
            description="Search spaces live in tuning/*.yaml (see tuning/README.md); rerunning the same sweep "
                        "resumes it.", subcommands=SWEEPS),
)
