"""`loom generate TASK …` (also `python -m loom.infer TASK …`): one item, or many with --batch.

    loom generate tutorial --model models/BAGEL-7B-MoT --prompt "How to fold a paper crane" --out out/crane
    loom generate tutorial --model EXPORT --prompt "Paint this scene step by step" --image photo.jpg --out out/p
    loom generate compose  --model EXPORT --prompt "The <model> of <image 1> wearing the <garment> of <image 2>" \\
                           --image person.png --image dress.png --out out/tryon
    loom generate decompose --model EXPORT --prompt "Extract the <upper> and <lower> from <image 1>" \\
                           --image outfit.png --num-outputs 2 --out out/parts
    loom generate style    --model EXPORT --prompt "Apply the <style> of <image 1> to <image 2>" \\
                           --image style.png --image content.png --out out/styled
    loom generate t2i | edit | understand …
    loom generate tutorial --model EXPORT --batch prompts.jsonl --out runs/tut     # resumable
    accelerate launch --num_processes 8 -m loom.infer tutorial --model EXPORT --batch prompts.jsonl --out runs/tut

Sampling flags left unset take the task's defaults (`loom.infer.settings.TASK_DEFAULTS`: the paper's scripts for
Loom tasks, BAGEL's notebook for t2i / edit); --config YAML sets them in bulk (configs/infer/*.yaml, keys =
`GenerationSettings` fields), explicit flags win. diffusers spellings are aliases: --num-inference-steps,
--guidance-scale, --image-guidance-scale, --height/--width, --negative-prompt. Every argument, input file and
--out is checked before the model loads. Exit status: 0 ok, 2 bad input (nothing written), 1 generation
failure, 130 interrupted (finished frames kept in OUT.partial/).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

from .planner import ExternalPlanner, FixedPlanner, PlanError

PROG = "loom generate"
TASK_HELP = {
    "tutorial": "text (+ one image) → plan + one image per step (plan-then-render)",
    "compose": "several images referenced as <image k> → one composed image",
    "decompose": "one composite image → M part images",
    "style": "style image + content image → stylised image",
    "t2i": "BAGEL text-to-image",
    "edit": "BAGEL image editing",
    "understand": "BAGEL image understanding (text answer)",
}


def _pair(kind: type):
    def parse(text: str):
        parts = [p for p in text.replace("x", ",").split(",") if p.strip()]
        if len(parts) != 2:
            raise argparse.ArgumentTypeError(f"expected two values like 0,1 — got {text!r}")
        try:
            return tuple(kind(p) for p in parts)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected two numbers like 0,1 — got {text!r}") from None
    return parse


class _Renamed(argparse.Action):
    """A removed flag: one line saying what it became (`--steps` meant plan steps; it was ambiguous)."""

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f"{option_string} was renamed: use --plan-steps N (tutorial steps to render) or "
                     "--timesteps N / --num-inference-steps N (denoising steps per image)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("task", choices=list(TASK_HELP), help="; ".join(f"{k}: {v}" for k, v in TASK_HELP.items()))
    io = p.add_argument_group("inputs / outputs")
    io.add_argument("--model", required=True, help="a BAGEL release folder or a loom export")
    io.add_argument("--prompt", help="the instruction (images are referenced as <image k>, k from 1)")
    io.add_argument("--image", action="append", default=[], help="input image (repeatable, in <image k> order)")
    io.add_argument("--out", required=True, help="output folder (--batch: root folder, one sub-folder per item)")
    io.add_argument("--batch", help="prompts.jsonl: generate many items (see loom.infer.batch)")
    io.add_argument("--shard", type=int, help="this process's shard (default: RANK under accelerate/torchrun)")
    io.add_argument("--num-shards", type=int, help="number of shards (default: WORLD_SIZE)")
    io.add_argument("--overwrite", action="store_true",
                    help="replace a finished result in --out (--batch: regenerate every item, new settings)")
    io.add_argument("--config", help="YAML of generation settings (configs/infer/*.yaml); flags override it")
    io.add_argument("--no-progress", action="store_true", help="no plan stream, no progress bars")
    io.add_argument("--gif", action="store_true", help="also write animation.gif (frames + step captions)")
    io.add_argument("--mp4", action="store_true", help="also write animation.mp4 (H.264)")

    g = p.add_argument_group("sampling (unset = task default)")
    g.add_argument("--seed", type=int, help="base seed (default 0); --batch derives per-item seeds from it")
    g.add_argument("--resolution", help="output size: 1024 or WIDTHxHEIGHT (multiples of 16)")
    g.add_argument("--height", type=int, help="output height in pixels (diffusers spelling; with --width)")
    g.add_argument("--width", type=int, help="output width in pixels (diffusers spelling; with --height)")
    g.add_argument("--timesteps", "--num-inference-steps", dest="num_timesteps", type=int, metavar="N",
                   help="denoising steps per image (default 50)")
    g.add_argument("--timestep-shift", type=float, help="default 3.0")
    g.add_argument("--cfg-text-scale", "--guidance-scale", dest="cfg_text_scale", type=float, metavar="S",
                   help="text guidance scale (default 4.0)")
    g.add_argument("--cfg-img-scale", "--image-guidance-scale", dest="cfg_img_scale", type=float, metavar="S",
                   help="image guidance scale (default 2.0; t2i 1.0)")
    g.add_argument("--cfg-interval", type=_pair(float), help="LO,HI on the shifted t")
    g.add_argument("--cfg-renorm-type", choices=["global", "channel", "text_channel"])
    g.add_argument("--cfg-renorm-min", type=float)
    g.add_argument("--negative-prompt", help="text the text-unconditional CFG branch reads instead of no text")
    e = p.add_argument_group("localised entity CFG (tutorial / compose / decompose / style; paper appendix A.1)")
    e.add_argument("--entity-scale", type=float,
                   help="guidance scale s_entity inside the entity's region (the text scale stays outside)")
    e.add_argument("--entity-mask", help="'auto' (default): the region the entity token(s) attract in the latent "
                   "tokens' attention; or a PNG mask (white = the entity's region)")
    e.add_argument("--entity-token", help="entity token(s) to follow, comma-separated (default: all in the prompt; "
                   "decompose: output m follows the m-th)")
    e.add_argument("--entity-layers", help="auto mask: LLM layers to average, e.g. all (default), 8-20, 4,5,6")
    e.add_argument("--entity-threshold", type=float, help="auto mask: threshold on the min-max normalised map "
                   "(default 0.5)")
    e.add_argument("--entity-top-fraction", type=float, help="auto mask: keep this fraction of the latent tokens "
                   "instead of thresholding")
    e.add_argument("--entity-step", type=int, help="auto mask: average attention over denoising steps 0..N "
                   "(default 0); ordinary CFG before the mask exists")
    g.add_argument("--vae-transform", type=_pair(int), help="MAX,MIN pixel sides of the VAE input resize")
    g.add_argument("--vit-transform", type=_pair(int), help="MAX,MIN pixel sides of the ViT input resize")

    t = p.add_argument_group("tutorial / decomposition")
    t.add_argument("--plan-steps", dest="num_plan_steps", type=int, metavar="N",
                   help="render at most this many plan steps (≤ N_max)")
    t.add_argument("--steps", nargs="?", action=_Renamed, help=argparse.SUPPRESS)
    t.add_argument("--k-max", type=int, help="history budget K_max (default: the model's, else 4)")
    t.add_argument("--feedback", choices=["latent", "pixel"], help="how frames re-enter the context")
    t.add_argument("--planner", choices=["model", "external", "fixed"], default="model",
                   help="who writes the plan: the model (default), an OpenAI-compatible endpoint, or --plan-file")
    t.add_argument("--planner-url", help="external planner base URL, e.g. http://127.0.0.1:8000/v1")
    t.add_argument("--planner-model", help="external planner model name")
    t.add_argument("--planner-api-key-env", default="OPENAI_API_KEY", help="env var holding the API key")
    t.add_argument("--plan-file", help="--planner fixed: text file with the plan ('Step 1: …' lines)")
    t.add_argument("--plan-temperature", type=float, help="plan sampling temperature (default 0.3; 0 = greedy)")
    t.add_argument("--max-plan-tokens", type=int, help="default 1000")
    t.add_argument("--strict-plan", action="store_true", default=None, help="any plan problem is an error")
    t.add_argument("--num-outputs", type=int, help="decompose: number of outputs M")
    t.add_argument("--max-answer-tokens", type=int, help="understand: default 1000")

    m = p.add_argument_group("model placement")
    m.add_argument("--device", help="cuda, cuda:1, cpu (default: cuda if available)")
    m.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU), bf16, fp16, fp32")
    m.add_argument("--device-map", choices=["balanced", "offload", "disk"],
                   help="split decoder layers over GPUs (balanced) or offload them to CPU RAM / disk")
    m.add_argument("--max-memory-gib", type=float, help="GPU budget for --device-map offload/disk")
    m.add_argument("--offload-folder", help="folder for --device-map disk")
    m.add_argument("--attn-backend", choices=["sdpa", "flex", "flash"])
    m.add_argument("--quantize", help="weight quantisation (torchao): none, int8, fp8, nf4 for every part, or per "
                   "part und=…,gen=…,vit=… (understanding / generation expert, ViT)")
    m.add_argument("--threads", type=int, help="torch CPU threads")
    return p


SETTING_FLAGS = ("seed", "num_timesteps", "timestep_shift", "cfg_text_scale", "cfg_img_scale", "cfg_interval",
                 "cfg_renorm_type", "cfg_renorm_min", "negative_prompt", "entity_scale", "entity_mask",
                 "entity_token", "entity_layers", "entity_threshold", "entity_top_fraction", "entity_step",
                 "vae_transform", "vit_transform", "num_plan_steps", "k_max", "feedback", "plan_temperature",
                 "max_plan_tokens", "strict_plan", "num_outputs", "max_answer_tokens")


def settings_from_args(args) -> object:
    from .pipeline import GenerationSettings, InputError, parse_resolution

    values: dict = {}
    if args.config:
        import yaml

        path = Path(args.config)
        if not path.is_file():
            raise InputError(f"--config {path} does not exist")
        try:
            d = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise InputError(f"--config {path}: not valid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(d, dict):
            raise InputError(f"--config {path}: expected a mapping of settings")
        names = {f.name for f in dataclasses.fields(GenerationSettings)}
        unknown = sorted(set(d) - names)
        if unknown:
            hint = " ('num_steps' is now 'num_plan_steps')" if "num_steps" in unknown else ""
            raise InputError(f"--config {path}: unknown settings {unknown}{hint}; known: {sorted(names)}")
        values.update({k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})
        if isinstance(values.get("resolution"), (str, int)):
            values["resolution"] = parse_resolution(str(values["resolution"]))
    for k in SETTING_FLAGS:
        v = getattr(args, k, None)
        if v is not None:
            values[k] = v
    if (args.height is None) != (args.width is None):
        raise InputError("--height and --width go together (or use --resolution 1024 / WIDTHxHEIGHT)")
    if args.height is not None:
        if args.resolution is not None:
            raise InputError("give --resolution or --height/--width, not both")
        values["resolution"] = (args.width, args.height)
    if args.resolution is not None:
        values["resolution"] = parse_resolution(args.resolution)
    s = GenerationSettings(**values)
    s.check_values()
    return s


def make_planner(args):
    from .pipeline import InputError

    if args.planner == "model":
        if args.plan_file or args.planner_url:
            raise InputError("--plan-file / --planner-url need --planner fixed / external")
        return None
    if args.task != "tutorial":
        raise InputError(f"--planner {args.planner} only applies to the tutorial task")
    if args.planner == "fixed":
        if not args.plan_file:
            raise InputError("--planner fixed needs --plan-file PLAN.txt")
        f = Path(args.plan_file)
        if not f.is_file():
            raise InputError(f"--plan-file {f} does not exist")
        return FixedPlanner(f.read_text(encoding="utf-8"))
    if not args.planner_url or not args.planner_model:
        raise InputError("--planner external needs --planner-url and --planner-model")
    import os

    return ExternalPlanner(args.planner_url, args.planner_model, api_key=os.environ.get(args.planner_api_key_env),
                           temperature=args.plan_temperature if args.plan_temperature is not None else 0.3,
                           max_tokens=args.max_plan_tokens or 1000)


def check_placement(args) -> None:
    """--device / --dtype / --device-map / --threads against this machine, before anything loads."""
    import torch

    from .load import parse_dtype
    from .pipeline import InputError

    dev = None
    if args.device is not None:
        try:
            dev = torch.device(args.device)
        except (RuntimeError, ValueError):
            raise InputError(f"--device {args.device!r} is not a device (use cpu, cuda or cuda:N)") from None
        if dev.type == "cuda":
            if not torch.cuda.is_available():
                why = "this torch build has no CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
                raise InputError(f"--device {args.device}: CUDA is not available ({why}); use --device cpu")
            if dev.index is not None and dev.index >= torch.cuda.device_count():
                raise InputError(f"--device {args.device}: only {torch.cuda.device_count()} CUDA device(s)")
        elif dev.type not in ("cpu", "mps") or (dev.type == "mps" and not torch.backends.mps.is_available()):
            raise InputError(f"--device {args.device} is not available here; use cpu or cuda")
    try:
        parse_dtype(args.dtype, dev or torch.device("cpu"))
    except ValueError as e:
        raise InputError(f"--dtype: {e}") from None
    if args.device_map == "balanced" and not torch.cuda.is_available():
        raise InputError("--device-map balanced needs CUDA GPUs; use --device-map offload or none on CPU")
    if args.device_map == "disk" and not args.offload_folder:
        raise InputError("--device-map disk needs --offload-folder DIR")
    if args.threads is not None and args.threads < 1:
        raise InputError(f"--threads must be ≥ 1, got {args.threads}")


def _validate(args):
    """Every argument, input file and the output folder, before the model loads. Returns what the run needs."""
    from .output import check_output_dir, check_writable
    from .pipeline import InputError, load_image_file
    from .settings import ModelLimits, check_inputs

    settings = settings_from_args(args)
    planner = make_planner(args)
    check_placement(args)
    try:
        limits = ModelLimits.read(args.model)
    except (FileNotFoundError, ValueError, OSError) as e:
        raise InputError(f"cannot load --model {args.model}: {e}") from None
    if args.batch:
        from .batch import batch_record, check_batch, check_resume, read_batch, shard_from_env

        if args.prompt or args.image:
            raise InputError("--batch takes prompts and images from the JSONL file, not --prompt / --image")
        items = read_batch(args.batch, args.task)
        rank, world = shard_from_env()
        shard = args.shard if args.shard is not None else rank
        num_shards = args.num_shards if args.num_shards is not None else world
        if num_shards < 1 or not 0 <= shard < num_shards:
            raise InputError(f"--shard {shard} / --num-shards {num_shards}: need 0 ≤ shard < num-shards")
        check_batch(items, settings, limits)
        check_writable(args.out)
        check_resume(args.out, batch_record(items, settings, planner, str(args.model)), args.overwrite)
        return settings, planner, (items, shard, num_shards)
    if args.prompt is None or not args.prompt.strip():
        raise InputError("the prompt is empty; pass --prompt TEXT")
    images = [load_image_file(p) for p in args.image]
    check_inputs(args.task, args.prompt, images, limits.max_references)
    settings.check(args.task, limits)
    check_output_dir(args.out, args.overwrite)
    return settings, planner, images


def main(argv: list[str] | None = None) -> int:
    from ..utils.cli import clean_warnings

    args = build_parser().parse_args(argv)
    with clean_warnings(PROG):
        try:
            return _main(args)
        except KeyboardInterrupt:  # outside a generation (loading, validation): nothing was written
            print(f"{PROG}: interrupted; nothing written", file=sys.stderr)
            return 130


def _main(args) -> int:
    from ..utils.cli import fail
    from .loop import InputError
    from .output import partial_dir, write_result
    from .pipeline import GenerationInterrupted, LoomPipeline

    try:
        settings, planner, inputs = _validate(args)
    except (InputError, PlanError) as e:  # identical on every rank of a sharded launch: said once
        return fail(PROG, str(e), 2, main_only=True)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    if device is None and args.batch:
        import os

        if torch.cuda.is_available():  # one GPU per process under accelerate launch / torchrun
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    try:
        t0 = time.perf_counter()
        pipe = LoomPipeline.from_pretrained(args.model, device=device, dtype=args.dtype, device_map=args.device_map,
                                            max_memory_gib=args.max_memory_gib, offload_folder=args.offload_folder,
                                            attn_backend=args.attn_backend, verbose=not args.no_progress,
                                            quantize=args.quantize)
        load_s = time.perf_counter() - t0
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        return fail(PROG, f"cannot load --model {args.model}: {e}", 2)

    progress = not args.no_progress
    if args.batch:
        from .batch import run_batch

        items, shard, num_shards = inputs
        try:
            rep = run_batch(pipe, items, args.out, settings, planner, shard, num_shards, progress,
                            overwrite=args.overwrite, model=str(args.model))
        except InputError as e:
            return fail(PROG, str(e), 2)
        print(f"[loom] shard {shard}/{num_shards}: {len(rep.done)} done, {len(rep.skipped)} already finished, "
              f"{len(rep.failed)} failed")
        from .gallery import write_gallery
        from .video import export_for_cli

        export_for_cli([Path(args.out) / i for i in rep.done], args.gif, args.mp4)
        print(f"[loom] gallery: {write_gallery(args.out, 'batch', {i.item_id: i.prompt for i in items})}")
        if rep.interrupted is not None:
            kept = f"; its finished frames are in {rep.partial}" if rep.partial else ""
            print(f"{PROG}: interrupted during item {rep.interrupted}{kept}; finished items are kept — rerun the "
                  "same command to resume", file=sys.stderr)
            return 130
        return 1 if rep.failed else 0
    try:
        res = pipe.run(args.task, args.prompt, inputs, settings, planner=planner, progress=progress,
                       input_paths=list(args.image))
        res.timings["load_seconds"] = load_s
        d = write_result(res, args.out, args.overwrite)
    except GenerationInterrupted as e:
        r = e.result
        if not r.frames:
            print(f"{PROG}: interrupted before any frame was finished; nothing written", file=sys.stderr)
            return 130
        dst = partial_dir(args.out)
        write_result(r, dst, overwrite=True)
        total = len(r.plan.steps) if r.plan else "?"
        print(f"{PROG}: interrupted; kept the {len(r.frames)} finished frame(s) of {total} in {dst}",
              file=sys.stderr)
        return 130
    except KeyboardInterrupt as e:  # during the final write: the files are kept in <out>.partial
        kept = getattr(e, "partial_output", None)
        print(f"{PROG}: interrupted while writing; " + (f"everything is kept in {kept}" if kept else
                                                        "nothing written"), file=sys.stderr)
        return 130
    except InputError as e:
        return fail(PROG, str(e), 2)
    except PlanError as e:  # the planner wrote nothing usable: a generation failure, nothing written
        return fail(PROG, str(e), 1)
    except OSError as e:  # a late write failure: the finished files survive next to --out
        kept = getattr(e, "partial_output", None)
        return fail(PROG, f"cannot write {args.out} ({e.strerror or e})"
                    + (f"; the finished files are kept in {kept}" if kept else ""), 1)
    if args.task == "understand":
        print(d.get("answer", ""))
    from .video import export_for_cli

    export_for_cli([Path(args.out)], args.gif, args.mp4)
    n = len(d["steps"])
    print(f"[loom] wrote {n} image(s) to {args.out} ({d['timings'].get('total_seconds', 0):.1f}s)"
          if n else f"[loom] wrote {args.out}/result.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
