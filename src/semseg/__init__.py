"""semseg: semantic segmentation experiments with Lightning and Hydra."""

# Importing it registers the resolver semseg's configs use, ${semseg.conf_file:<path>} (this
# function), before any of them is composed or resolved, whichever entry point imports semseg.
from semseg.config_resolvers import conf_file  # noqa: F401
