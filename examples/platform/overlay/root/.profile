PS1='$(hostname):$PWD# '
export PS1
