# shellcheck shell=bash
# Sourced by the example scripts: how they print and (unless DRY_RUN=1) run their commands.

# Print a command on one line, quoted so that a shell (or Python's shlex.split) reads back the same
# words; then run it unless DRY_RUN=1.
run_cmd() {
    local word line="" q="'"
    for word in "$@"; do
        if [[ -z "${word}" || "${word}" =~ [^A-Za-z0-9_./:=,+@%-] ]]; then
            word="${q}${word//${q}/${q}\\${q}${q}}${q}"
        fi
        line+="${line:+ }${word}"
    done
    echo "${line}"
    if [[ "${DRY_RUN:-0}" != 1 ]]; then
        "$@"
    fi
}
