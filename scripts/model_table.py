"""The model table of docs/models.md: parameters, GFLOPs and CPU forward latency of each model config.

    python scripts/model_table.py                       # 512x512, 21 classes, Markdown to stdout
    python scripts/model_table.py --size 256 --repeats 5 --output models.md --only FCN SegFormer

Each row is built from the real ``conf/model`` configs with Hydra overrides, exactly as
``scripts/train.py model=...`` builds it. FLOPs are counted by ``torch.utils.flop_counter`` for one
forward pass of one image, two per multiply-add (papers such as SegFormer's count multiply-adds,
half of this). Latency is the median wall-clock time of ``--repeats`` forward passes after one
warm-up, batch 1, fp32, no gradients, on every CPU core.
"""

import argparse
from pathlib import Path

from semseg.cli import exit_on_user_error


# argparse, not @hydra.main: the table composes many model configs itself, one per row, rather than
# running from one config.
@exit_on_user_error
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512, help="square input side in pixels (default 512)")
    parser.add_argument("--num-classes", type=int, default=21, help="output classes (default 21, as Pascal VOC)")
    parser.add_argument("--repeats", type=int, default=3, help="timed forward passes per model (default 3)")
    parser.add_argument("--output", type=Path, help="also write the Markdown table to this file")
    parser.add_argument("--only", nargs="+", metavar="TEXT", help="only the rows whose label contains TEXT")
    args = parser.parse_args()
    # After parsing: torch takes seconds to load, which --help need not wait for.
    from semseg.bench.architectures import model_table

    print(model_table(args.size, args.num_classes, args.repeats, args.only, args.output))


if __name__ == "__main__":
    main()
