#!/bin/bash
# Base-to-new generalisation for MixPrompt, step 2: evaluate on the new classes.
#
#   bash scripts/mixprompt/base2new_test.sh DATASET SEED [KEY VALUE ...]
#
# Only TRAINER.MIXPROMPT.SCOPE shared (K sub-prompts shared by all classes) can score classes unseen in
# training, so this script sets it; K comes from the environment (K, default 8) and names the run folder
# <CFG>_shared_k<K>[_<TAG>]. Everything else (environment variables DATA OUTPUT CFG SHOTS TAG PYTHON LOADEP,
# output layout, skipping finished runs) is scripts/cocoop/base2new_test.sh; see docs/base2new.md.
STEP=test
source "$(dirname "${BASH_SOURCE[0]}")/base2new_common.sh"
