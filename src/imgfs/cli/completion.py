"""Shell completion scripts, generated from the argparse parser so they never drift from the real options.

Completes subcommands and options, files for ARCHIVE, directories for -o and mount points, image labels
for --image, layer names for --layer (from `imgfs layers ARCHIVE --names`) and paths inside the image
for ls/cat/extract (from `imgfs ls -l ARCHIVE DIR [--layer SEL]`). The line is split as the shell does
(quotes, backslashes), so a word in an open quote completes too; the candidates are given as they are and
the shell quotes what it inserts (bash through `-o filenames`, zsh by itself). zsh runs the same functions
in sh emulation and hands their candidates to compadd.
"""

from __future__ import annotations

import argparse

BASH = r"""# imgfs completion for bash. Load it with:  eval "$(imgfs completion bash)"
_imgfs_lines() {  # run imgfs quietly, one candidate a line
    "$_imgfs_prog" "$@" -q 2>/dev/null
}

_imgfs_lex() {  # split the line before the cursor as the shell does (quotes, backslashes), words unquoted
    local s=$1 i=0 n=${#1} c q="" w="" inword=0
    _imgfs_words=() _imgfs_cut=""
    while ((i < n)); do
        c=${s:$i:1}
        if [[ -n $q ]]; then
            if [[ $c == "$q" ]]; then
                q=""
            elif [[ $q == '"' && $c == '\' && ${s:$((i + 1)):1} == [\"\\\$\`] ]]; then
                ((i++))
                w+=${s:$i:1}
            else
                w+=$c
            fi
        elif [[ $c == [\'\"] ]]; then
            q=$c inword=1 _imgfs_cut=$w  # readline completes what follows an open quote
        elif [[ $c == '\' ]]; then
            ((i++))
            w+=${s:$i:1} inword=1
        elif [[ $c == [[:space:]] ]]; then
            ((inword)) && _imgfs_words+=("$w")
            w="" inword=0 _imgfs_cut=""
        else
            w+=$c inword=1
            [[ $c == [:=] ]] && _imgfs_cut=$w  # a word break for readline: it completes only what follows
        fi
        ((i++))
    done
    _imgfs_words+=("$w")  # the word being completed, maybe empty
    _imgfs_quote=$q
}

_imgfs_offer() {  # add the candidates on stdin that start with $2 (with $1 before each) to _imgfs_reply
    local pre=$1 want=$2 line
    while IFS= read -r line; do
        [[ -n $line && $line == "$want"* ]] && _imgfs_reply+=("$pre$line")
    done
}

_imgfs_offer_layers() {  # layer names starting with $2, else those holding it (--layer takes a substring)
    local pre=$1 want=$2 line
    local -a all=()
    while IFS= read -r line; do
        [[ -n $line ]] && all+=("$line")
    done
    _imgfs_offer "$pre" "$want" < <(printf '%s\n' "${all[@]}")
    ((${#_imgfs_reply[@]})) && return 0
    for line in "${all[@]}"; do
        [[ $line == *"$want"* ]] && _imgfs_reply+=("$pre$line")
    done
}

_imgfs_image_paths() {  # paths inside the image, one directory level at a time
    local archive=$1 cur=$2 dir mode name
    [[ $cur == /* ]] || cur=/$cur
    dir=${cur%/*}/
    _imgfs_offer "" "$cur" < <(_imgfs_lines ls -l "$archive" "$dir" "${@:3}" |
        while IFS=$'\t' read -r mode _ _ _ _ name; do
        name=${name%% -> *}
        [[ $mode == d* ]] && name=$name/
        printf '%s\n' "$dir$name"
    done)
    [[ ${#_imgfs_reply[@]} -eq 1 && ${_imgfs_reply[0]} == */ ]] && _imgfs_nospace=1
}

_imgfs_complete() {  # the candidates for the last of _imgfs_words: _imgfs_reply, or _imgfs_want=files|dirs
    local n=${#_imgfs_words[@]} cmd="" archive="" npos=0 i w skip=0 keep="" prev="" cur pre=""
    local -a img=() lay=()
    cur=${_imgfs_words[n-1]}
    [[ -x ${_imgfs_words[0]} && ${_imgfs_words[0]} == */* ]] && _imgfs_prog=${_imgfs_words[0]}
    for ((i = 1; i < n - 1; i++)); do
        w=${_imgfs_words[i]}
        if ((skip)); then
            skip=0
            [[ $keep == img ]] && img+=("$w")
            [[ $keep == lay ]] && lay+=("$w")
            continue
        fi
        if [[ -z $cmd ]]; then
            case " @GLOBAL_VALUED@ " in *" $w "*) skip=1 keep=""; continue ;; esac
            [[ $w != -* ]] && cmd=$w
            continue
        fi
        case ${w%%=*} in  # --image/--platform/--layer also steer the lookups below
            --image | --platform) [[ $w == *=* ]] && img+=("$w") ;;
            --layer) [[ $w == *=* ]] && lay+=("$w") ;;
        esac
        [[ $w == -*=* ]] && continue
        case " $(_imgfs_valued "$cmd") " in
            *" $w "*)  # its value is the next word
                skip=1 keep=""
                [[ $w == --image || $w == --platform ]] && keep=img && img+=("$w")
                [[ $w == --layer ]] && keep=lay && lay+=("$w")
                continue ;;
        esac
        [[ $w == -* ]] && continue
        ((npos++))
        ((npos == 1)) && archive=$w
    done
    ((skip)) && prev=${_imgfs_words[n-2]}
    if [[ $cur == --*=* ]]; then  # --layer=VALUE: complete the value
        prev=${cur%%=*} pre=${cur%%=*}= cur=${cur#*=}
    fi
    _imgfs_cur=$cur _imgfs_pre=$pre
    if [[ $prev == --cache-dir ]]; then
        _imgfs_want=dirs
        return 0
    fi
    if [[ -z $cmd ]]; then
        [[ -n $prev ]] && return 0
        if [[ $cur == -* ]]; then
            _imgfs_offer "" "$cur" <<< "$(printf '%s\n' @GLOBAL_OPTS@)"
        else
            _imgfs_offer "" "$cur" <<< "$(printf '%s\n' @COMMANDS@)"
        fi
        return 0
    fi
    [[ $archive == \~/* ]] && archive=$HOME/${archive#\~/}
    case $prev in
        --layer)
            [[ -n $archive ]] &&
                _imgfs_offer_layers "$pre" "$cur" < <(_imgfs_lines layers "$archive" --names "${img[@]}")
            return 0 ;;
        --image)
            [[ -n $archive ]] && _imgfs_offer "$pre" "$cur" < <(_imgfs_lines images "$archive" | cut -f1)
            return 0 ;;
        --type)
            _imgfs_offer "$pre" "$cur" <<< "$(printf '%s\n' @TYPES@)"
            return 0 ;;
        -o | --output)
            [[ $cmd != mount ]] && _imgfs_want=dirs
            return 0 ;;
    esac
    [[ -n $prev ]] && return 0
    if [[ $cur == -* ]]; then
        _imgfs_offer "" "$cur" <<< "$(printf '%s\n' $(_imgfs_opts "$cmd"))"
        return 0
    fi
    case $cmd in
        completion) _imgfs_offer "" "$cur" <<< "$(printf '%s\n' @SHELLS@)" ;;
        umount) _imgfs_want=dirs ;;
        cache) ((npos == 0)) && _imgfs_offer "" "$cur" <<< "$(printf '%s\n' info clear)" ;;
        *)
            if ((npos == 0)); then
                _imgfs_want=files
            elif [[ $cmd == mount ]]; then
                _imgfs_want=dirs
            elif [[ $cmd == ls || $cmd == cat || $cmd == extract ]]; then
                _imgfs_image_paths "$archive" "$cur" "${img[@]}" "${lay[@]}"
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

_imgfs_run() {  # lex the line before the cursor and find its candidates
    _imgfs_prog=imgfs _imgfs_want="" _imgfs_nospace="" _imgfs_reply=()
    _imgfs_lex "$1"
    _imgfs_complete
}
"""

BASH_TAIL = r"""
_imgfs() {
    local _imgfs_prog _imgfs_want _imgfs_nospace _imgfs_cut _imgfs_quote _imgfs_cur _imgfs_pre c
    local -a _imgfs_words _imgfs_reply
    _imgfs_run "${COMP_LINE:0:COMP_POINT}"
    # readline quotes what it inserts (inside an open quote too) and lists the candidates as they are
    compopt -o filenames 2>/dev/null
    [[ -n $_imgfs_nospace ]] && compopt -o nospace 2>/dev/null
    case $_imgfs_want in
        files) mapfile -t _imgfs_reply < <(compgen -f -- "$_imgfs_cur") ;;
        dirs) mapfile -t _imgfs_reply < <(compgen -d -- "$_imgfs_cur") ;;
    esac
    [[ -n $_imgfs_want ]] && _imgfs_reply=("${_imgfs_reply[@]/#/$_imgfs_pre}")
    COMPREPLY=()
    for c in "${_imgfs_reply[@]}"; do  # readline replaces only what follows the last ':' or '=' or quote
        [[ $c == "$_imgfs_cut"* ]] && COMPREPLY+=("${c#"$_imgfs_cut"}")
    done
    return 0
}

complete -F _imgfs imgfs
"""

ZSH_TAIL = r"""
_imgfs_zsh() {  # zsh quotes what it inserts itself; the shared functions run in sh emulation
    local _imgfs_prog _imgfs_want _imgfs_nospace _imgfs_cut _imgfs_quote _imgfs_cur _imgfs_pre
    local -a _imgfs_words _imgfs_reply
    _imgfs_zsh_run "${(j: :)words[1,CURRENT]}"
    [[ -n $_imgfs_pre ]] && compset -P '*='
    case $_imgfs_want in
        files) _files ;;
        dirs) _directories ;;
        *)  # listed as they are: a path by its last component, as files are
            local -a shown
            local c
            for c in "${_imgfs_reply[@]}"; do
                [[ $c == /* ]] && c=${${c%/}##*/}${c[-1]/[^\/]/}
                shown+=("$c")
            done
            (( $#_imgfs_reply )) && compadd -U ${_imgfs_nospace:+-S ''} -d shown -a _imgfs_reply ;;
    esac
}

_imgfs_zsh_run() {
    emulate -L sh
    setopt kshglob noshglob braceexpand
    _imgfs_run "$1"
}

compdef _imgfs_zsh imgfs
"""

ZSH_HEAD = """# imgfs completion for zsh. Load it with:
#   eval "$(imgfs completion zsh)"
(( $+functions[compdef] )) || { autoload -U +X compinit && compinit; }
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
    return ZSH_HEAD + text + ZSH_TAIL if shell == "zsh" else text + BASH_TAIL
