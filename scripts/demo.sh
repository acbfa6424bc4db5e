#!/bin/bash
# One-command demo, no data and no weights needed (a few minutes on 2 CPU cores):
#
#   bash scripts/demo.sh
#
# 1. takes the tiny CLIP pretrained on the generated world (docs/synthetic_world.md: pretrained here with the
#    quick recipe, about a minute, unless DEMO_WORLD_CLIP names a checkpoint) and a SyntheticWorld dataset
#    whose "<colour> <shape>" classes each come in several hidden looks (size, position, background);
#    DEMO_BACKBONE=random uses instead a tiny CLIP with seeded RANDOM weights (scripts/make_tiny_clip.py)
#    on Stanford Cars-format data (scripts/make_fake_dataset.py --modes), for plumbing only;
# 2. runs zero-shot CLIP, CoOp, and MixPrompt with the original (collapsing) and the fixed settings through
#    the real scripts (scripts/zsclip/zeroshot.sh, scripts/coop/main.sh, scripts/mixprompt/main.sh) with
#    tiny training settings passed as KEY VALUE options;
# 3. prints the comparison table (scripts/parse_results.py) and the collapse table
#    (scripts/collapse_report.py), and writes the collapse figures.
#
# Everything goes under WORK (default demo/, outside output/ so that the demo's runs never show up in the
# main job's tables): data/, the weights, output/ (the runs, CoOp's layout), plots/ and console.log (the full
# output of every run). Running it again skips what is done; two fresh runs give identical tables.
#
# Size knobs (environment; the defaults are the demo):
#   DEMO_BACKBONE world (or random), DEMO_WORLD_CLIP (a pretrained world CLIP to use; default:
#   weights/world_clip.pt when it exists, else one pretrained into WORK with the quick recipe), DEMO_CLASSES 4, DEMO_MODES 4 (looks per class), DEMO_TRAIN_PER_CLASS 20, DEMO_TEST_PER_CLASS 8,
#   DEMO_IMAGE_SIZE 32, DEMO_SHOTS 16, DEMO_K 4, DEMO_EPOCHS 12, DEMO_BATCH 8, DEMO_SEEDS "1 2 3", DEMO_NCTX 16
#   (CoOp's context tokens), PYTHON (default python, else python3), OMP_NUM_THREADS (default 1).
set -uo pipefail

WORK=${WORK:-demo}
mkdir -p "$WORK" && WORK=$(cd "$WORK" && pwd)
CLASSES=${DEMO_CLASSES:-4}
MODES=${DEMO_MODES:-4}
TRAIN_PER_CLASS=${DEMO_TRAIN_PER_CLASS:-20}
TEST_PER_CLASS=${DEMO_TEST_PER_CLASS:-8}
IMAGE_SIZE=${DEMO_IMAGE_SIZE:-32}
SHOTS=${DEMO_SHOTS:-16}
K=${DEMO_K:-4}
EPOCHS=${DEMO_EPOCHS:-12}
BATCH=${DEMO_BATCH:-8}
SEEDS=${DEMO_SEEDS:-1 2 3}
NCTX=${DEMO_NCTX:-16}
BACKBONE=${DEMO_BACKBONE:-world}
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"  # REPO, PYTHON
export PYTHON
# One intra-op thread: the demo's tensors are tiny, and on a busy 2-core machine torch's default thread
# pool makes each small operation wait for the other core (measured: a 12-epoch run 10 s with 1 thread,
# 77 s with 2, under a load of 4). Set OMP_NUM_THREADS to override.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
CONSOLE=$WORK/console.log
START=$(date +%s)

banner() {
    if [ "$BACKBONE" = world ]; then
        echo "!! The CLIP used here is a tiny model pretrained on a generated world of coloured shapes, not OpenAI's"
        echo "!! CLIP: the accuracies compare methods on that world and say nothing about real datasets."
    else
        echo "!! The CLIP used here is a tiny model with seeded RANDOM weights, not a pretrained one: the accuracies"
        echo "!! of this demo only show that the pipeline runs end to end; they say nothing about any method."
    fi
}
elapsed() { local s=$(($(date +%s) - START)); printf '%d:%02d' $((s / 60)) $((s % 60)); }
step() { echo; echo "[$(elapsed)] $*"; }
die() { echo "ERROR: $*" >&2; echo "Full output: $CONSOLE" >&2; exit 1; }

# Condensed progress from the scripts' output (the full output goes to console.log and each run's log.txt).
progress() {
    awk '
        function flush_pending() { if (pending != "") { print pending; fflush(); pending = "" } }
        /^epoch \[[0-9]+\/[0-9]+\] collapse/ {  # MixPrompt: follows the epoch'"'"'s last training line
            if (pending == "") { split($2, e, /[][\/]/); pending = "    epoch " e[2] "/" e[3] ":" }
            pending = pending " |"
            for (i = 3; i < NF; i++) if ($i == "eff_k" || $i == "top1_share" || $i == "feature_cos") pending = pending " " $i " " $(i + 1)
            flush_pending(); next
        }
        { flush_pending() }
        /^(==>|Oops!|ERROR|usage:)/ { print; fflush(); next }
        /^epoch \[[0-9]+\/[0-9]+\] batch \[/ {
            split($2, e, /[][\/]/); split($4, b, /[][\/]/)
            if (b[2] == b[3]) {
                pending = "    epoch " e[2] "/" e[3] ": train"
                for (i = 5; i < NF; i++) {
                    v = substr($(i + 2), 2, length($(i + 2)) - 2)  # the running average, "(x)"
                    if ($i == "loss") pending = pending sprintf(" loss %.3f", v)
                    if ($i == "acc") pending = pending sprintf(" acc %.1f%%", v)
                }
            }
            next
        }
        /^\* accuracy: / { print "    test accuracy: " $3; fflush(); next }
        END { flush_pending() }
    '
}

run_script() {  # run_script LABEL ENV... -- SCRIPT ARGS...
    local label=$1; shift
    step "$label"
    echo "### $label" >>"$CONSOLE"
    env "$@" 2>&1 | tee -a "$CONSOLE" | progress
    [ "${PIPESTATUS[0]}" -eq 0 ] || die "$label failed"
}

echo "MixPrompt demo in $WORK ($(echo $SEEDS | wc -w) seed(s): $SEEDS; $EPOCHS epochs; $CLASSES classes x $MODES looks; K=$K)"
banner
: >"$CONSOLE"

# ---- 1. data and weights
case $BACKBONE in world|random) ;; *) die "DEMO_BACKBONE must be world or random, got \"$BACKBONE\"" ;; esac
COMMON=(DATALOADER.NUM_WORKERS 0 DATALOADER.TEST.BATCH_SIZE 64
        TRAIN.PRINT_FREQ 1000)  # fewer batches than PRINT_FREQ: every batch is logged (the progress shows the last)
if [ "$BACKBONE" = world ]; then
    DATASET=synthetic_world_modes  # the dataset generates itself under DATA on first use
    WEIGHTS=${DEMO_WORLD_CLIP:-}
    if [ -z "$WEIGHTS" ]; then  # the full-quality model when it was pretrained (docs/synthetic_world.md), else quick
        WEIGHTS=$WORK/world_clip.pt
        [ -f "$REPO/weights/world_clip.pt" ] && WEIGHTS=$REPO/weights/world_clip.pt
    fi
    if [ -f "$WEIGHTS" ]; then
        step "1/6 the pretrained world CLIP: $WEIGHTS"
    else
        step "1/6 pretraining the tiny world CLIP (quick recipe, about a minute): $WEIGHTS"
        "$PYTHON" "$REPO/scripts/pretrain_tiny_clip.py" "$WEIGHTS" --quick --no-progress 2>&1 | tee -a "$CONSOLE" \
            || die "pretraining failed"
    fi
    P=DATASET.SYNTHETIC_WORLD
    # INPUT.SIZE: the world CLIP's resolution (32 px); the dataset's images are drawn at DEMO_IMAGE_SIZE
    COMMON+=(INPUT.SIZE "(32, 32)" $P.NUM_CLASSES "$CLASSES" $P.NUM_MODES "$MODES"
             $P.TRAIN_PER_CLASS "$TRAIN_PER_CLASS" $P.TEST_PER_CLASS "$TEST_PER_CLASS" $P.IMAGE_SIZE "$IMAGE_SIZE")
else
    DATASET=stanford_cars
    SETTINGS="classes=$CLASSES modes=$MODES train=$TRAIN_PER_CLASS test=$TEST_PER_CLASS size=$IMAGE_SIZE"
    if [ -d "$WORK/data/stanford_cars" ]; then
        [ "$(cat "$WORK/data/settings.txt" 2>/dev/null)" = "$SETTINGS" ] || \
            die "$WORK/data holds a dataset made with other settings; delete $WORK or choose another WORK"
        step "1/6 data and tiny CLIP: already in $WORK"
    else
        step "1/6 generating Stanford Cars-format data ($CLASSES classes, $MODES looks each) and a tiny CLIP"
        "$PYTHON" "$REPO/scripts/make_fake_dataset.py" stanford_cars "$WORK/data" --classes "$CLASSES" \
            --train-per-class "$TRAIN_PER_CLASS" --test-per-class "$TEST_PER_CLASS" --image-size "$IMAGE_SIZE" \
            --modes "$MODES" --seed 0 2>&1 | tee -a "$CONSOLE" || die "data generation failed"
        echo "$SETTINGS" >"$WORK/data/settings.txt"
    fi
    WEIGHTS=$WORK/tiny_clip.pt
    if [ ! -f "$WEIGHTS" ]; then
        "$PYTHON" "$REPO/scripts/make_tiny_clip.py" "$WEIGHTS" 2>&1 | tee -a "$CONSOLE" || die "tiny CLIP failed"
    fi
fi
COMMON+=(MODEL.BACKBONE.NAME "$WEIGHTS")

# ---- 2. the runs, through the real scripts
TRAIN=(OPTIM.MAX_EPOCH "$EPOCHS" DATALOADER.TRAIN_X.BATCH_SIZE "$BATCH")
ENV=(DATA="$WORK/data" OUTPUT="$WORK/output" SHOTS="$SHOTS" SEEDS="$SEEDS")
run_script "2/6 zero-shot CLIP" "${ENV[@]}" bash "$REPO/scripts/zsclip/zeroshot.sh" "$DATASET" "${COMMON[@]}"
run_script "3/6 CoOp" "${ENV[@]}" NCTX="$NCTX" bash "$REPO/scripts/coop/main.sh" "$DATASET" "${COMMON[@]}" "${TRAIN[@]}"
run_script "4/6 MixPrompt, original settings (CFG=original)" "${ENV[@]}" CFG=original \
    bash "$REPO/scripts/mixprompt/main.sh" "$DATASET" "$K" "${COMMON[@]}" "${TRAIN[@]}"
run_script "5/6 MixPrompt, fixed defaults (CFG=vit_b16)" "${ENV[@]}" CFG=vit_b16 \
    bash "$REPO/scripts/mixprompt/main.sh" "$DATASET" "$K" "${COMMON[@]}" "${TRAIN[@]}"

# ---- 3. the tables
step "6/6 reports"
echo
echo "== Comparison: python scripts/parse_results.py $WORK/output"
"$PYTHON" "$REPO/scripts/parse_results.py" "$WORK/output" || die "parse_results.py failed"
echo
echo "== Collapse: python scripts/collapse_report.py $WORK/output --plot $WORK/plots"
"$PYTHON" "$REPO/scripts/collapse_report.py" "$WORK/output" --plot "$WORK/plots" 2>>"$CONSOLE" \
    || die "collapse_report.py failed"
echo
echo "Figures in $WORK/plots:"
ls "$WORK/plots" | sed 's/^/  /'
echo
banner
echo "What to look for: on data whose classes come in $MODES looks, the original MixPrompt settings let one"
echo "sub-prompt take every image of a class (eff_k near 1, top1_share near 1, collapsed yes); the fixed"
echo "defaults keep several sub-prompts in use (eff_k well above 1). Runs, logs and checkpoints: $WORK/output."
echo "Demo finished in $(elapsed) (full output: $CONSOLE)."
