#!/usr/bin/env bash
# cryoseg on your own micrographs, at their true scale: label -> train -> predict -> pick -> evaluate.
#
# Inputs (edit the paths):
#   MICS    full-size micrographs (MRC with the pixel size in the header; or TIFF/PNG/JPG with --pixel-size)
#   COORDS  expert picks, one file per micrograph named like it: RELION/cryoSPARC STAR, EMAN BOX, Topaz TXT
#           or CryoPPP CSV (or MASKS: mask images of the same names, then `label masks` below)
#   NEW     micrographs to pick (same kind of data; at the training pixel size or finer: predict bins, never upsamples)
# The particle diameter is stated once, in Å; everything else follows from the pixel sizes:
#   label bins the micrographs so particles are 24 px across and records the scale in dataset.json;
#   train stores that scale and the picking threshold fitted on the validation micrographs in best.pt;
#   predict bins each new micrograph to the model's pixel size itself (Fourier crop);
#   pick writes coordinates in the ORIGINAL micrographs' pixels, under their own names, with a RELION 3.1
#   optics block at the original pixel size (particles.star), ready for RELION or cryoSPARC import.
# Every command resumes when rerun after an interruption; --force replaces only what it wrote.
set -euo pipefail

MICS=${MICS:-micrographs}            # labelled micrographs
COORDS=${COORDS:-coordinates}        # their expert picks
NEW=${NEW:-new_micrographs}          # micrographs to pick
WORK=${WORK:-cryoseg_run}            # everything cryoseg writes goes under here
DIAMETER_A=${DIAMETER_A:-300}        # particle diameter in Å
PIXEL_SIZE=${PIXEL_SIZE:-}           # Å/px, only for files without one in the header (TIFF/PNG/JPG)
EPOCHS=${EPOCHS:-30}
PX=${PIXEL_SIZE:+--pixel-size $PIXEL_SIZE}

# 1. Labels: discs at the expert picks, binned so particles are 24 px across; 20 % of the micrographs held out.
#    (y measured from the bottom, as in some Topaz/EMAN exports: add --flip-y)
cryoseg label coords --micrographs "$MICS" --coordinates "$COORDS" --out "$WORK/labels" \
    --diameter-a "$DIAMETER_A" --target-diameter-px 24 --val-fraction 0.2 $PX
# or, from mask images:
# cryoseg label masks --micrographs "$MICS" --masks masks/ --out "$WORK/labels" \
#     --diameter-a "$DIAMETER_A" --target-diameter-px 24 --val-fraction 0.2 $PX

# 2. Train a U-Net (validation from the split above; the picking threshold is fitted on it).
cryoseg train --data "$WORK/labels" --out "$WORK/model" --epochs "$EPOCHS"

# 3. Probability maps: each micrograph binned to the model's pixel size, then the network
#    (add --crf torch to refine with the dense CRF; off by default: on real data it lowered AP, see BENCHMARKS.md).
cryoseg predict --model "$WORK/model/best.pt" --data "$NEW" --out "$WORK/predict" $PX

# 4. Picks in the original micrographs' frame: STAR (per micrograph + particles.star), BOX, CSV and Topaz TXT.
#    Diameter and threshold come from the model; --edge-px drops picks near a damaged border.
cryoseg pick --probs "$WORK/predict/probabilities" --out "$WORK/picks" --formats star,box,csv,txt --edge-px 50

# 5. (optional) Against held-out expert picks of the same micrographs: precision, recall, F1, AP, PR curve.
# cryoseg evaluate --picks "$WORK/picks/star" --truth held_out_coordinates/ --diameter-px 224 --out "$WORK/eval"
