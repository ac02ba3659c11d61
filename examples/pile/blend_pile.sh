#!/bin/bash
# The weighted per-domain blend of the preprocessed Pile, as a --data-path value in BLEND_FILE.
#
#   OUTPUT_DIR=/data/pile_mile bash examples/pile/blend_pile.sh
#   BLEND=weights WEIGHTS_FILE=my_rates.txt bash examples/pile/blend_pile.sh
#   DRY_RUN=1 bash examples/pile/blend_pile.sh                  # print the command, run nothing
#
# BLEND (the sampling rate of each domain; within a domain, documents are sampled uniformly):
#   pile_epochs  tokens x the Pile's own epochs per domain (examples/pile/pile_epochs.txt)
#   tokens       proportional to tokens (each token seen equally often)
#   weights      the shares in WEIGHTS_FILE, one "DOMAIN=SHARE" per line (normalised), e.g. a
#                paper's per-domain sampling rates; every domain needs one
# BLEND_FILE holds "w1 prefix1 w2 prefix2 ..." (the weights sum to 1): pass it as
# DATA_PATH="$(cat BLEND_FILE)" to the pretraining scripts, or use examples/pile/pretrain_pile.sh.
# The table of domains, tokens and weights goes to stderr.
set -euo pipefail

OUTPUT_DIR=${OUTPUT_DIR:-/data/pile_mile}
STATS=${STATS:-${OUTPUT_DIR}/mile-manifests/pile_train.json}  # the merge's manifest
BLEND=${BLEND:-pile_epochs}                       # pile_epochs | tokens | weights
WEIGHTS_FILE=${WEIGHTS_FILE:-}
BLEND_FILE=${BLEND_FILE:-${OUTPUT_DIR}/pile_train_blend.txt}
DRY_RUN=${DRY_RUN:-0}                             # 1: print the command and exit
EXAMPLES_DIR=${EXAMPLES_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}

# shellcheck source-path=SCRIPTDIR source=../configs/run_cmd.sh
source "${EXAMPLES_DIR}/configs/run_cmd.sh"

# "DOMAIN=VALUE" lines of a file, without comments and blank lines.
read_pairs() {
    local line
    while IFS= read -r line || [[ -n "${line}" ]]; do
        [[ -z "${line}" || "${line}" == \#* ]] || PAIRS+=("${line}")
    done < "$1"
}

BLEND_ARGS=()
PAIRS=()
case "${BLEND}" in
    pile_epochs)
        read_pairs "${EXAMPLES_DIR}/pile/pile_epochs.txt"
        BLEND_ARGS=(--epochs "${PAIRS[@]}")
        ;;
    tokens) ;;
    weights)
        if [[ -z "${WEIGHTS_FILE}" ]]; then
            echo "BLEND=weights needs WEIGHTS_FILE (DOMAIN=SHARE per line)" >&2
            exit 2
        fi
        read_pairs "${WEIGHTS_FILE}"
        BLEND_ARGS=(--weights "${PAIRS[@]}")
        ;;
    *)
        echo "BLEND must be pile_epochs, tokens or weights, got '${BLEND}'" >&2
        exit 2
        ;;
esac

BLEND_CMD=(mile-blend "${STATS}" --table "${BLEND_ARGS[@]}")
if [[ "${DRY_RUN}" == 1 ]]; then
    run_cmd "${BLEND_CMD[@]}"
    exit 0
fi
DATA_PATH_FLAG=$("${BLEND_CMD[@]}")                # "--data-path w1 prefix1 ..."
echo "${DATA_PATH_FLAG#--data-path }" > "${BLEND_FILE}"
echo "wrote ${BLEND_FILE}" >&2
