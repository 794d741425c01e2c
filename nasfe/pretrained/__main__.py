"""``python -m nasfe.pretrained MODEL_PT [--out FILE] [--note TEXT]``: pack a retrained model."""

from __future__ import annotations

import argparse
import sys

from nasfe.pretrained import DEFAULT_MODEL, pack_model


def main(argv=None) -> int:
    """Pack ``MODEL_PT`` into the packaged default (or ``--out``); print its size."""
    p = argparse.ArgumentParser(prog="python -m nasfe.pretrained", description=__doc__)
    p.add_argument("model", help="model.pt written by retrain")
    p.add_argument("--out", default=str(DEFAULT_MODEL), help=f"destination (default {DEFAULT_MODEL})")
    p.add_argument("--note", default="", help="provenance stored in the file (the command that trained it)")
    a = p.parse_args(argv)
    try:
        info = pack_model(a.model, a.out, a.note)
    except (ValueError, OSError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"packed {info['parameters']} values into {info['path']} ({info['bytes']} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
