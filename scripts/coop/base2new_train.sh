#!/bin/bash
# Base-to-new generalisation for CoOp, step 1: train on the base classes.
#
#   bash scripts/coop/base2new_train.sh DATASET SEED [KEY VALUE ...]
#
# CoCoOp's protocol with CoOp's recipe (CoCoOp's scripts: TRAINER=CoOp, CFG=vit_b16_ctxv1: ViT-B/16, 200
# epochs, 4 context tokens from "a photo of a"; CoCoOp uses CFG=vit_b16_ep50_ctxv1 for ImageNet).
# Everything else (environment variables DATA OUTPUT CFG SHOTS TAG PYTHON, output layout, skipping
# finished runs) is scripts/cocoop/base2new_train.sh; see docs/base2new.md.
set -euo pipefail
export TRAINER=CoOp
export CFG=${CFG:-vit_b16_ctxv1}
exec bash "$(dirname "${BASH_SOURCE[0]}")/../cocoop/base2new_train.sh" "$@"
