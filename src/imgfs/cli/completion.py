"""Shell completion scripts, generated from the argparse parser so they never drift from the real options.

Completes subcommands and options, files for ARCHIVE, directories for -o and mount points, image labels
for --image, layer names for --layer (from `imgfs layers ARCHIVE --names`) and paths inside the image
for ls/cat/extract (from `imgfs ls -l ARCHIVE DIR`). zsh runs the same function through bashcompinit.
"""

from __future__ import annotations

import argparse

BASH = r"""# imgfs completion for bash. Load it with:  eval "$(imgfs completion bash)"
_imgfs_lines() {  # run imgfs quietly, one candidate a line
    "$_imgfs_prog" "$@" -q 2>/dev/null
}

_imgfs_add() {  # add the candidates on stdin that start with $1, shell-quoted (never in a pipeline: a subshell)
    local want=$1 line
    while IFS= read -r line; do
        [[ -n $line && $line == "$want"* ]] && COMPREPLY+=("$(printf '%q' "$line")")
    done
}

_imgfs_image_paths() {  # paths inside the image, one directory level at a time
    local archive=$1 cur=$2 dir mode name
    [[ $cur == /* ]] || cur=/$cur
    dir=${cur%/*}/
    _imgfs_add "$cur" < <(_imgfs_lines ls -l "$archive" "$dir" "${@:3}" | while IFS=$'\t' read -r mode _ _ _ _ name; do
        name=${name%% -> *}
        [[ $mode == d* ]] && name=$name/
        printf '%s\n' "$dir$name"
    done)
    [[ ${#COMPREPLY[@]} -eq 1 && ${COMPREPLY[0]} == */ ]] && type compopt &>/dev/null && compopt -o nospace 2>/dev/null
}

_imgfs() {
    local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]}
    local _imgfs_prog=imgfs
    [[ -x ${COMP_WORDS[0]} && ${COMP_WORDS[0]} == */* ]] && _imgfs_prog=${COMP_WORDS[0]}
    local cmd="" archive="" npos=0 i w skip=0 keep=0 sel=()
    COMPREPLY=()
    for ((i = 1; i < COMP_CWORD; i++)); do
        w=${COMP_WORDS[i]}
        if ((skip)); then
            skip=0
            ((keep)) && sel+=("$w")
            continue
        fi
        if [[ -z $cmd ]]; then
            case " @GLOBAL_VALUED@ " in *" $w "*) skip=1 keep=0; continue ;; esac
            [[ $w != -* ]] && cmd=$w
            continue
        fi
        case " $(_imgfs_valued "$cmd") " in
            *" $w "*)  # its value is the next word; --image/--platform also steer the lookups below
                skip=1 keep=0
                [[ $w == --image || $w == --platform ]] && keep=1 && sel+=("$w")
                continue ;;
        esac
        [[ $w == -* ]] && continue
        ((npos++))
        ((npos == 1)) && archive=$w
    done
    local word=${cur//\\/}
    word=${word#[\'\"]}
    if [[ $prev == --cache-dir ]]; then
        COMPREPLY=($(compgen -d -- "$cur"))
        return 0
    fi
    if [[ -z $cmd ]]; then
        case " @GLOBAL_VALUED@ " in *" $prev "*) return 0 ;; esac
        if [[ $cur == -* ]]; then
            _imgfs_add "$word" <<< "$(printf '%s\n' @GLOBAL_OPTS@)"
        else
            _imgfs_add "$word" <<< "$(printf '%s\n' @COMMANDS@)"
        fi
        return 0
    fi
    archive=${archive//\\/}
    archive=${archive#[\'\"]}
    archive=${archive%[\'\"]}
    [[ $archive == \~/* ]] && archive=$HOME/${archive#\~/}
    case $prev in
        --layer)
            [[ -n $archive ]] && _imgfs_add "$word" < <(_imgfs_lines layers "$archive" --names "${sel[@]}")
            return 0 ;;
        --image)
            [[ -n $archive ]] && _imgfs_add "$word" < <(_imgfs_lines images "$archive" | cut -f1)
            return 0 ;;
        --type)
            _imgfs_add "$word" <<< "$(printf '%s\n' @TYPES@)"
            return 0 ;;
        -o | --output)
            if [[ $cmd != mount ]]; then
                COMPREPLY=($(compgen -d -- "$cur"))
            fi
            return 0 ;;
    esac
    case " $(_imgfs_valued "$cmd") " in *" $prev "*) return 0 ;; esac
    if [[ $cur == -* ]]; then
        _imgfs_add "$word" <<< "$(printf '%s\n' $(_imgfs_opts "$cmd"))"
        return 0
    fi
    case $cmd in
        completion) _imgfs_add "$word" <<< "$(printf '%s\n' @SHELLS@)" ;;
        umount) COMPREPLY=($(compgen -d -- "$cur")) ;;
        cache) ((npos == 0)) && _imgfs_add "$word" <<< "$(printf '%s\n' info clear)" ;;
        *)
            if ((npos == 0)); then
                COMPREPLY=($(compgen -f -- "$cur"))
            elif [[ $cmd == mount ]]; then
                COMPREPLY=($(compgen -d -- "$cur"))
            elif [[ $cmd == ls || $cmd == cat || $cmd == extract ]]; then
                _imgfs_image_paths "$archive" "$word" "${sel[@]}"
            fi ;;
    esac
    return 0
}

_imgfs_opts() {
    case $1 in
@OPTS_CASES@
    esac
}

_imgfs_valued() {  # options that take a value
    case $1 in
@VALUED_CASES@
    esac
}

complete -F _imgfs imgfs
"""

ZSH_HEAD = """# imgfs completion for zsh (the bash completion, run through bashcompinit). Load it with:
#   eval "$(imgfs completion zsh)"
(( $+functions[compdef] )) || { autoload -U +X compinit && compinit; }
autoload -U +X bashcompinit && bashcompinit
"""

SHELLS = ("bash", "zsh")


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:  # argparse keeps subparsers only here
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _options(p: argparse.ArgumentParser) -> tuple[list[str], list[str]]:
    """(every option string, those that take a value) of a parser."""
    opts, valued = [], []
    for action in p._actions:
        opts += action.option_strings
        if action.option_strings and action.nargs != 0:
            valued += action.option_strings
    return opts, valued


def script(shell: str, parser: argparse.ArgumentParser) -> str:
    """The completion script for `shell` ('bash' or 'zsh')."""
    subs = _subcommands(parser)
    opts_cases, valued_cases = [], []
    for name, sub in subs.items():
        opts, valued = _options(sub)
        opts_cases.append(f"        {name}) echo '{' '.join(opts)}' ;;")
        valued_cases.append(f"        {name}) echo '{' '.join(valued)}' ;;")
    find = subs["find"]
    types = next(a.choices for a in find._actions if "--type" in a.option_strings)
    text = (BASH.replace("@GLOBAL_OPTS@", " ".join(_options(parser)[0]))
            .replace("@GLOBAL_VALUED@", " ".join(_options(parser)[1]))
            .replace("@COMMANDS@", " ".join(subs))
            .replace("@TYPES@", " ".join(types or ()))
            .replace("@SHELLS@", " ".join(SHELLS))
            .replace("@OPTS_CASES@", "\n".join(opts_cases))
            .replace("@VALUED_CASES@", "\n".join(valued_cases)))
    return ZSH_HEAD + text if shell == "zsh" else text
