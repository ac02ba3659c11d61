# shellcheck shell=bash
# Sourced by analysis_walkthrough.sh and replicate_small.sh: the README demo's real-text corpus
# (the standard library's and the required dependencies' docs, licenses and code, one pseudo-domain
# per source), a sentencepiece BPE trained on it and
# one Megatron indexed dataset per domain, each step skipped when its output exists.
#
# prepare_real_text_data: reads WORK, PYTHON, CORPUS_MB, VOCAB (and DRY_RUN, run_cmd); sets
# TOKENIZER_MODEL, DATA_MANIFEST (what mile-preprocess writes) and DATASETS (the prefixes; one
# placeholder under DRY_RUN=1, when nothing has been written).
prepare_real_text_data() {
    local data="${WORK}/data/corpus" idx
    TOKENIZER_MODEL="${WORK}/spm${VOCAB}.model"
    DATA_MANIFEST="${WORK}/data/mile-manifests/corpus.json"
    if [[ ! -f "${WORK}/corpus.jsonl" ]]; then
        run_cmd "${PYTHON}" -m megatron_mile.data.corpus --output "${WORK}/corpus.jsonl" --min-mb "${CORPUS_MB}"
    fi
    if [[ ! -f "${TOKENIZER_MODEL}" ]]; then
        run_cmd "${PYTHON}" -m megatron_mile.data.train_tokenizer --input "${WORK}/corpus.jsonl" \
            --model-prefix "${TOKENIZER_MODEL%.model}" --vocab-size "${VOCAB}"
    fi
    if [[ ! -f "${DATA_MANIFEST}" ]]; then
        run_cmd "${PYTHON}" -m megatron_mile.data.preprocess --input "${WORK}/corpus.jsonl" \
            --tokenizer-type SentencePieceTokenizer --tokenizer-model "${TOKENIZER_MODEL}" --append-eod \
            --split-by meta.pile_set_name --output-prefix "${data}" --quiet
    fi
    DATASETS=()
    if [[ "${DRY_RUN:-0}" == 1 ]]; then
        DATASETS=("${data}_DOMAIN_text_document")
        return
    fi
    for idx in "${data}"_*_text_document.idx; do
        DATASETS+=("${idx%.idx}")
    done
}
