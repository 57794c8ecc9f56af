"""What a video record's tracking costs against its encoding: seconds of SAM-2's image encoder on
one frame and of memory attention for one object on one frame (7 memory frames and 16 object
pointers, the full memory bank), random weights, 2 torch threads.

Batched inference encodes a frame once for all of a record's expressions, but memory attention
runs for every object on every frame; these two figures bound what batching can save on a video.

    .venv/bin/python benchmarks/tracker_cost.py                # salma-1b's SAM-2.1 Hiera-L at 1024 px
    .venv/bin/python benchmarks/tracker_cost.py --hiera tiny --image-size 512
"""

from __future__ import annotations

import argparse
import time

import torch

from salma.builder import build_sam
from salma.config import salma_1b_config


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hiera", help="SAM-2.1 backbone size (default: salma-1b's)")
    parser.add_argument("--image-size", type=int, help="SAM-2 input size (default: salma-1b's)")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    torch.manual_seed(0)
    cfg = salma_1b_config().sam
    cfg = cfg.model_copy(update={k: v for k, v in (("hiera", args.hiera), ("image_size", args.image_size)) if v})
    sam = build_sam(cfg, load_checkpoint=False).sam.eval()
    enc, att, (h, w) = measure(sam, cfg.image_size)
    print(f"SAM-2.1 Hiera-{cfg.hiera} at {cfg.image_size} px ({h}x{w} tokens): image encoder {enc:.2f} s per frame; "
          f"memory attention {att:.2f} s per object and frame (7 memory frames + 16 pointers)")


@torch.no_grad()
def measure(sam, size: int) -> tuple[float, float, tuple[int, int]]:
    """(encoder s per frame, memory attention s per object and frame, token grid), each the
    second of two calls."""
    x = torch.randn(1, 3, size, size)
    sam.image_encoder(x)
    t0 = time.perf_counter()
    out = sam.image_encoder(x)
    enc = time.perf_counter() - t0
    feats = out["backbone_fpn"][-1]  # (1, 256, h, w)
    h, w = feats.shape[-2:]
    current = feats.flatten(2).permute(2, 0, 1)  # (hw, 1, 256), as SAM-2 lays tokens out
    current_pos = out["vision_pos_enc"][-1].flatten(2).permute(2, 0, 1)
    pointers = 16 * (256 // sam.mem_dim)  # 16 object pointers, each split into mem_dim-wide tokens
    memory = torch.randn(7 * h * w + pointers, 1, sam.mem_dim)
    memory_pos = torch.randn(7 * h * w + pointers, 1, sam.mem_dim)

    def attend():
        return sam.memory_attention(curr=[current], curr_pos=[current_pos], memory=memory, memory_pos=memory_pos,
                                    num_obj_ptr_tokens=pointers)

    attend()
    t0 = time.perf_counter()
    attend()
    att = time.perf_counter() - t0
    return enc, att, (h, w)


if __name__ == "__main__":
    main()
