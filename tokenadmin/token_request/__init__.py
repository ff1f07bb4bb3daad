"""Token requests: a member asks for more tokens of a kind; an administrator decides once."""
