"""The loop a user writes by hand, kept as the baseline semseg's recipes must beat.

    python scripts/baseline_loop.py --root /path/to/camvid --num-classes 11 --ignore-index 11

PyTorch + segmentation-models-pytorch and nothing of semseg: the training split decoded and
resized once into memory, U-Net ResNet-18 from random weights, cross-entropy, AdamW 1e-3 with a
poly schedule, horizontal flips, batch 8; the val split scored once at the end by torchmetrics.
Prints one JSON line: val mIoU, pixel accuracy, per-class IoU, the wall clock of the whole
script (imports, decoding and evaluation included), as ``/usr/bin/time`` would count a train.py
run, and the training loop's own seconds and images. docs/camvid.md compares it with
``experiment=camvid`` at equal wall clock; ``make bench`` (part g) times it against train.py as
whole processes (``--no-eval``: training only, as a run with validation off). ``--device cuda
--bf16`` trains on a GPU with bfloat16 autocast, as ``trainer=gpu`` does.
"""

import argparse
import json
import time
from pathlib import Path

STARTED = time.perf_counter()  # imports are part of the timed wall clock


def load_split(root: str, split: str, size: tuple[int, int]):
    """Images (N, 3, H, W) normalised with ImageNet's statistics and masks (N, H, W) of a split."""
    import cv2
    import numpy as np
    import torch

    images_dir = Path(root, "images", split)
    if not images_dir.is_dir():
        raise SystemExit(f"{images_dir} does not exist: --root must hold images/{{train,val}} and masks/{{train,val}}")
    images, masks = [], []
    for image_path in sorted(images_dir.iterdir()):
        mask_path = next(Path(root, "masks", split).glob(image_path.stem + ".*"), None)
        if mask_path is None:
            masks_dir = Path(root, "masks", split)
            raise SystemExit(f"{image_path} has no mask in {masks_dir}: add {image_path.stem}.png there")
        image = cv2.cvtColor(cv2.imread(str(image_path)), cv2.COLOR_BGR2RGB)
        mask = cv2.imread(str(mask_path), cv2.IMREAD_UNCHANGED)
        images.append(cv2.resize(image, size[::-1], interpolation=cv2.INTER_LINEAR))
        masks.append(cv2.resize(mask, size[::-1], interpolation=cv2.INTER_NEAREST))
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor([0.485, 0.456, 0.406])[:, None, None]) / torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    return x, torch.from_numpy(np.stack(masks)).long()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True, help="folder with images/{train,val} and masks/{train,val}")
    parser.add_argument("--num-classes", type=int, required=True)
    parser.add_argument("--ignore-index", type=int, default=-100)
    parser.add_argument("--size", type=int, nargs=2, default=[192, 256], metavar=("H", "W"))
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-eval", action="store_true", help="train only: no val split read or scored")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast around forward and loss")
    args = parser.parse_args()
    # torch loads after the command line is read (as in every script here: --help is quick).
    import segmentation_models_pytorch as smp
    import torch

    torch.manual_seed(args.seed)

    train_x, train_y = load_split(args.root, "train", tuple(args.size))
    device = torch.device(args.device)
    model = smp.Unet("resnet18", encoder_weights=None, classes=args.num_classes).to(device)
    loss_fn = torch.nn.CrossEntropyLoss(ignore_index=args.ignore_index)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    total_steps = args.epochs * (len(train_x) // args.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: (1 - step / total_steps) ** 0.9)

    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16)
    model.train()
    train_started, train_images = time.perf_counter(), 0
    for _ in range(args.epochs):
        order = torch.randperm(len(train_x))
        for start in range(0, len(order) - args.batch_size + 1, args.batch_size):
            index = order[start : start + args.batch_size]
            x, y = train_x[index], train_y[index]
            flip = torch.rand(len(index)) < 0.5
            x[flip], y[flip] = x[flip].flip(-1), y[flip].flip(-1)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with autocast:
                loss = loss_fn(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            train_images += len(index)
    if device.type == "cuda":
        torch.cuda.synchronize()
    result = {"train_s": round(time.perf_counter() - train_started, 2), "train_images": train_images}
    if not args.no_eval:
        result = evaluate(model, args, device, autocast) | result
    print(json.dumps(result | {"wall_clock_s": round(time.perf_counter() - STARTED, 1), "args": vars(args)}))


def evaluate(model, args, device, autocast) -> dict:
    """mIoU, pixel accuracy and per-class IoU of ``model`` on the val split."""
    import torch
    from torchmetrics.classification import MulticlassConfusionMatrix

    val_x, val_y = load_split(args.root, "val", tuple(args.size))
    confusion = MulticlassConfusionMatrix(args.num_classes, ignore_index=args.ignore_index).to(device)
    model.eval()
    with torch.no_grad(), autocast:
        for start in range(0, len(val_x), args.batch_size):
            logits = model(val_x[start : start + args.batch_size].to(device))
            confusion.update(logits.argmax(1), val_y[start : start + args.batch_size].to(device))
    matrix = confusion.compute().double()
    iou = matrix.diag() / (matrix.sum(0) + matrix.sum(1) - matrix.diag())
    return {
        "val/miou": round(iou.nanmean().item(), 4),
        "val/pixel_acc": round((matrix.diag().sum() / matrix.sum()).item(), 4),
        "val/iou": [round(v, 4) for v in iou.tolist()],
    }


if __name__ == "__main__":
    main()
