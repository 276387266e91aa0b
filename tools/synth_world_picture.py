"""A picture of the synthetic world: subjects (rows) making expressions (columns), rendered by
`ava synth`'s own frame renderer from the frontal camera 401031.

    python tools/synth_world_picture.py docs/images/synth_world.png [--subjects 4] [--downsample 16]

About 35 CPU-seconds at the defaults (one process).
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np

EXPRESSIONS = {
    "neutral": {},
    "jaw open": {"jaw_open": 1.0},
    "smile": {"smile_left": 1.0, "smile_right": 1.0, "jaw_open": 0.3, "blink_left": 0.25, "blink_right": 0.25},
    "pucker": {"lip_pucker": 1.0},
    "funnel": {"lip_funnel": 1.0, "jaw_open": 0.2},
    "wink, look left": {"blink_right": 1.0, "gaze_horizontal": 1.0, "smile_right": 0.3},
    "sad": {"frown_left": 1.0, "frown_right": 1.0, "brow_inner_left": 0.9, "brow_inner_right": 0.9,
            "gaze_vertical": -0.5},
    "cheeks puffed": {"cheek_puff": 1.0},
    "nose wrinkle": {"nose_wrinkle": 1.0, "brow_inner_left": -0.8, "brow_inner_right": -0.8},
    "tongue out": {"jaw_open": 0.6, "tongue_out": 1.0, "jaw_sideways": 0.4},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path)
    parser.add_argument("--subjects", type=int, default=4)
    parser.add_argument("--downsample", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from PIL import Image

    from ava.data.formats import decode_image
    from ava.synth import SynthConfig
    from ava.synth.expressions import Expression
    from ava.synth.pipeline import FrameTask, plan_subjects, render_frame

    config = SynthConfig(n_ids=args.subjects, n_frames=1, n_cams=4, downsample=args.downsample, headset=False,
                         seed=args.seed)
    expressions = [Expression(**pose) for pose in EXPRESSIONS.values()]
    rows = []
    for index, plan in enumerate(plan_subjects(config)):
        frontal = [camera for camera in plan.cameras if camera.camera_id == "401031"]
        plan = replace(plan, cameras=frontal, backgrounds=plan.backgrounds[:1], expressions=expressions,
                       frames=[plan.frames[0]] * len(expressions), poses=np.repeat(plan.poses[:1], len(expressions), 0))
        images = [np.asarray(decode_image(render_frame(FrameTask(index, frame, plan, config)).images["401031"]))
                  for frame in range(len(expressions))]
        height, width = images[0].shape[:2]
        crop = (slice(height // 6, height * 2 // 3), slice(width // 8, width * 7 // 8))  # the head
        rows.append(np.concatenate([image[crop] for image in images], axis=1))
        print(f"subject {index + 1}/{args.subjects}", flush=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(rows, axis=0)).save(args.output, optimize=True)
    print(f"wrote {args.output}; columns: {', '.join(EXPRESSIONS)}")


if __name__ == "__main__":
    main()
