"""mkdocs-gen-files script (mkdocs.yml): writes the command and configuration references into the site
at build time, from fedmlp.reference, so that no generated page is committed."""

import mkdocs_gen_files

from fedmlp.reference import command_reference, config_reference

for name, text in (("command-reference.md", command_reference()), ("config-reference.md", config_reference())):
    with mkdocs_gen_files.open(name, "w") as f:
        f.write(text)
