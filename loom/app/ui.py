"""The Gradio app of `loom serve`: one tab per task, the plan shown first, each frame streamed as it is rendered.

Every finished generation is also written as a normal output folder (`loom.infer.output.write_result`: frames,
result.json, the storyboard) plus its GIF under the server's --out-root, and the GIF is offered for download.
API names (for `gradio_client`): /tutorial, /compose, /decompose, /style — inputs in the order of the tab.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import gradio as gr

from ..infer.pipeline import GenerationSettings, InputError, load_image_file, parse_resolution
from ..infer.planner import FixedPlanner, PlanError
from ..infer.storyboard import entity_labels
from ..infer.video import export_video, scaled, target_width
from .stream import stream_run

INTRO = ("Loom renders interleaved tutorials plan-then-render: the model writes the whole plan first, then each "
         "frame conditioned on the plan, its step text and a sparse history of earlier frames.")


def _display(im):
    """Small frames enlarged by an integer factor, nearest-neighbour (the browser would blur them)."""
    return scaled(im, target_width(im.width))


class DemoApp:
    """The request handlers, bound to one pipeline and the server's default settings."""

    def __init__(self, pipe, defaults: GenerationSettings, out_root: str | Path) -> None:
        self.pipe, self.defaults, self.out_root = pipe, defaults, Path(out_root)
        self.count = 0

    def settings(self, seed, timesteps, resolution, **extra) -> GenerationSettings:
        over = {k: v for k, v in extra.items() if v is not None}
        try:
            if seed is not None and str(seed).strip() != "":
                over["seed"] = int(seed)
            if timesteps:
                over["num_timesteps"] = int(timesteps)
            if resolution and str(resolution).strip():
                over["resolution"] = parse_resolution(str(resolution))
        except (TypeError, ValueError) as e:
            raise gr.Error(str(e)) from None
        return dataclasses.replace(self.defaults, **over)

    def run(self, task: str, prompt: str, images: list, s: GenerationSettings, planner=None):
        """Generator of (plan text, gallery, status, animation file) updates."""
        if not prompt or not prompt.strip():
            raise gr.Error("The prompt is empty.")
        plan_text, gallery, total = "", [], None
        yield plan_text, gallery, "Writing the plan…" if task == "tutorial" else "Rendering…", None
        t0 = time.perf_counter()
        for kind, x in stream_run(self.pipe, task, prompt, images, s, planner):
            if kind == "plan":
                total = len(x.steps)
                plan_text = "\n".join(f"{k}. {step}" for k, step in enumerate(x.steps, 1))
                status = f"Plan: {total} steps in {x.seconds:.1f} s. Rendering frame 1/{total}…"
            elif kind == "frame":
                label = entity_labels({"prompt": prompt, "steps": [{}] * x.index})[-1] if task == "decompose" \
                    else None
                head = f"Step {x.index}" if task == "tutorial" else f"Output {x.index}"
                head += f" · {label}" if label else ""
                gallery.append((_display(x.image), f"{head}: {x.text}" if x.text else head))
                of = f"/{total}" if total else ""
                status = f"Frame {x.index}{of} done ({x.seconds:.1f} s)."
            elif kind == "error":
                if isinstance(x, (InputError, PlanError, FileNotFoundError)):
                    raise gr.Error(str(x))
                raise gr.Error(f"generation failed: {type(x).__name__}: {x}")
            else:
                yield plan_text, gallery, "Writing the output folder…", None
                gif = self.save(x)
                status = f"Done: {len(x.frames)} image(s) in {time.perf_counter() - t0:.1f} s · saved to {gif.parent}"
                yield plan_text, list(gallery), status, str(gif)
                return
            yield plan_text, list(gallery), status, None

    def save(self, res) -> Path:
        from ..infer.output import write_result

        self.count += 1
        out = self.out_root / f"{time.strftime('%Y%m%d-%H%M%S')}-{res.task}-{self.count:03d}"
        write_result(res, out)
        return export_video(out, ["gif"])[0]

    # ---- one handler per tab (gradio maps inputs positionally) -------------------------------------------------
    def tutorial(self, prompt, image, plan, steps, seed, timesteps, resolution):
        s = self.settings(seed, timesteps, resolution, num_steps=int(steps) if steps else None)
        planner = FixedPlanner(plan) if plan and plan.strip() else None  # else the model writes the plan
        yield from self.run("tutorial", prompt, [image] if image is not None else [], s, planner)

    def compose(self, prompt, files, seed, timesteps, resolution):
        images = [load_image_file(f) for f in (files or [])]
        yield from self.run("compose", prompt, images, self.settings(seed, timesteps, resolution))

    def decompose(self, prompt, image, num_outputs, seed, timesteps, resolution):
        if image is None:
            raise gr.Error("Decomposition needs an input image.")
        s = self.settings(seed, timesteps, resolution, num_outputs=int(num_outputs) if num_outputs else None)
        yield from self.run("decompose", prompt, [image], s)

    def style(self, prompt, style_image, content_image, seed, timesteps, resolution):
        if style_image is None or content_image is None:
            raise gr.Error("Style transfer needs a style image (<image 1>) and a content image (<image 2>).")
        yield from self.run("style", prompt, [style_image, content_image],
                            self.settings(seed, timesteps, resolution))


def build_app(handlers: DemoApp, model_label: str = "") -> gr.Blocks:
    d = handlers.defaults
    with gr.Blocks(title="loom", analytics_enabled=False) as demo:
        gr.Markdown(f"## Loom: interleaved plan-then-render\n{INTRO}" + (f"\n\nModel: `{model_label}`"
                                                                          if model_label else ""))

        def common():
            with gr.Accordion("Sampling", open=False):
                seed = gr.Number(value=d.seed, precision=0, label="seed")
                timesteps = gr.Slider(2, 100, value=d.num_timesteps, step=1, label="denoising timesteps")
                res = gr.Textbox(value="" if d.resolution is None else f"{d.resolution[0]}x{d.resolution[1]}",
                                 label="resolution (1024 or WIDTHxHEIGHT; empty: the task default)")
            return [seed, timesteps, res]

        def outputs():
            with gr.Column(scale=3):
                status = gr.Markdown("Ready.", elem_id="status")
                plan = gr.Textbox(label="Plan (written first)", lines=6, interactive=False, elem_id="plan")
                gallery = gr.Gallery(label="Frames (streamed as rendered)", columns=3, height="auto",
                                     format="png", object_fit="contain", elem_id="frames")
                gif = gr.File(label="Animation (GIF)", interactive=False)
            return [plan, gallery, status, gif]

        with gr.Tab("Tutorial"), gr.Row():
            with gr.Column(scale=2):
                prompt = gr.Textbox(label="What to teach", value="How to draw a red circle", elem_id="prompt",
                                    lines=2)
                image = gr.Image(label="Optional starting image", type="pil", image_mode="RGB")
                own = gr.Textbox(label="Your own plan (optional, one 'Step k: …' per line; empty: the model "
                                 "writes it)", lines=3, elem_id="own-plan")
                steps = gr.Slider(0, 6, value=0, step=1, label="steps (0: as many as the plan has)")
                extra = common()
                go = gr.Button("Generate tutorial", variant="primary", elem_id="run-tutorial")
            outs = outputs()
            go.click(handlers.tutorial, [prompt, image, own, steps, *extra], outs, api_name="tutorial")
        with gr.Tab("Compose"), gr.Row():
            with gr.Column(scale=2):
                prompt = gr.Textbox(label="Instruction", lines=2,
                                    value="The <model> of <image 1> wearing the <garment> of <image 2>")
                files = gr.File(label="Reference images, in <image k> order", file_count="multiple",
                                file_types=["image"], type="filepath")
                extra = common()
                go = gr.Button("Compose", variant="primary")
            outs = outputs()
            go.click(handlers.compose, [prompt, files, *extra], outs, api_name="compose")
        with gr.Tab("Decompose"), gr.Row():
            with gr.Column(scale=2):
                prompt = gr.Textbox(label="Instruction", lines=2, value="Extract the <upper> and <lower> from <image 1>")
                image = gr.Image(label="Composite image", type="pil", image_mode="RGB")
                num = gr.Slider(0, 6, value=0, step=1, label="outputs (0: one per entity token)")
                extra = common()
                go = gr.Button("Decompose", variant="primary")
            outs = outputs()
            go.click(handlers.decompose, [prompt, image, num, *extra], outs, api_name="decompose")
        with gr.Tab("Style"), gr.Row():
            with gr.Column(scale=2):
                prompt = gr.Textbox(label="Instruction", lines=2, value="Apply the <style> of <image 1> to <image 2>.")
                style = gr.Image(label="Style image (<image 1>)", type="pil", image_mode="RGB")
                content = gr.Image(label="Content image (<image 2>)", type="pil", image_mode="RGB")
                extra = common()
                go = gr.Button("Stylise", variant="primary")
            outs = outputs()
            go.click(handlers.style, [prompt, style, content, *extra], outs, api_name="style")
    return demo
