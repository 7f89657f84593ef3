"""The example platform: make_workspace lays it out as a workspace of git repositories."""
