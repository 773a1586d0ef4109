#!/bin/bash
# The C4140 system table (ssdwb/lab/c4140_systems.csv, the one copy of it) in plain bash: the
# configs are sourced by run.slurm on the submit host, outside any container and before any
# Python runs. Sourced by slurm/config_<N>xC4140.sh:
#
#   system_row 2xC4140    # sets ROW_<COLUMN> for each column of the table's header, e.g.
#                         # ROW_NODES, ROW_BATCH_PER_GPU, ROW_LR_FLAG (shell variables, not exported)
#
# The table is found next to this file (../ssdwb/lab/), so it works from any directory and from
# the checkout that the container copies too.

system_table() {
    echo "$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/ssdwb/lab/c4140_systems.csv"
}

system_row() {
    local want=$1 table line i
    local -a header=() fields=()
    table=$(system_table)
    if [[ ! -f "$table" ]]; then
        echo "error: $table does not exist (the C4140 system table)" >&2
        return 1
    fi
    while IFS= read -r line || [[ -n "$line" ]]; do
        line=${line%$'\r'}
        [[ -z "$line" || "$line" == "#"* ]] && continue
        IFS=, read -r -a fields <<< "$line"
        if (( ${#header[@]} == 0 )); then
            header=("${fields[@]}")
            continue
        fi
        [[ "${fields[0]}" == "$want" ]] || continue
        if (( ${#fields[@]} != ${#header[@]} )); then
            echo "error: $table: the row of $want has ${#fields[@]} values for ${#header[@]} columns" >&2
            return 1
        fi
        for i in "${!header[@]}"; do
            printf -v "ROW_${header[i]^^}" '%s' "${fields[i]}"
        done
        return 0
    done < "$table"
    echo "error: $table has no row for system $want" >&2
    return 1
}
