"""Beyond the paper, each labelled as such: optical-flow correspondence (the paper's baseline),
DiffEdit's edit mask and prompt-to-prompt's word swap."""
