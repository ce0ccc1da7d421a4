"""Check a data set before training: `python scripts/inspect_data.py [data overrides]`.

Prints the splits, class pixel frequencies, per-image presence, suggested class weights and every
problem (file + fix); writes the JSON report (`report=<file>`); exits 1 when there are problems.
"""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from semseg.cli import exit_on_user_error


@hydra.main(version_base="1.3", config_path="../conf", config_name="inspect_data")
@exit_on_user_error(lightning=False)  # a data check: no torch, no Lightning, a quick start
def main(cfg: DictConfig) -> None:
    # Imported here, after the command line is read, which --help need not wait for.
    from semseg.data.inspection import inspect_data
    from semseg.data.synthetic import require_data_named
    from semseg.files import write_json_atomic

    if OmegaConf.is_missing(cfg.data, "root"):
        require_data_named(cfg.data, "python scripts/inspect_data.py")
    if OmegaConf.is_missing(cfg.data, "num_classes"):
        sys.exit(_describe_without_classes(OmegaConf.to_container(cfg.data, resolve=True)))
    report = inspect_data(OmegaConf.to_container(cfg.data, resolve=True), full=cfg.full)
    print(report.summary())
    write_json_atomic(Path(cfg.report), report.to_json())
    print(f"report: {cfg.report}")
    if not report.ok:
        sys.exit(1)


def _describe_without_classes(data: dict) -> str:
    from semseg.data.colour_labels import suggested_colour_map
    from semseg.data.inspection import describe_values, stored_mask_values

    root = data["root"]
    values, colours = stored_mask_values(data)
    if not values and colours:
        print(f"the masks of {root} are colour masks of {len(colours)} colours: {suggested_colour_map(colours, 50)}.")
        return (
            "error: data.num_classes is not set. Set it to the number of classes, and map each colour to its "
            "class (index or name) or to data.ignore_index with data.label_map, or name a palette file of "
            "name,R,G,B rows (see docs/data.md#colour-masks)."
        )
    if not values:
        return f"error: no single-channel masks found under {root}/masks/{{train,val,test}}."
    print(f"the masks of {root} store the values {describe_values(values)}.")
    return (
        "error: data.num_classes is not set. Set it to the number of classes, and map stored values that are "
        "not 0..num_classes-1 with data.label_map (e.g. data.label_map={0:0,255:1} for 0/255 masks)."
    )


if __name__ == "__main__":
    main()
