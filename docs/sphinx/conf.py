# Sphinx configuration of the collection's rendered docs (docs/build.sh, make docs).
# Made from `antsibull-docs sphinx-init` (antsibull-docs 2.28.0), then changed so
# that it builds offline: no intersphinx (the Ansible docs' inventories would be
# downloaded); the few Ansible labels the generated pages link to are defined
# in rst/ansible_references.rst instead. docs/build.sh keeps warnings fatal (-W).

project = 'reposerver.backup'
copyright = 'reposerver.backup contributors'

title = 'reposerver.backup'
html_short_title = 'reposerver.backup'

extensions = ['sphinx_antsibull_ext']

pygments_style = 'ansible'

highlight_language = 'YAML+Jinja'

html_theme = 'sphinx_ansible_theme'
html_show_sphinx = False

display_version = False

html_use_smartypants = True
html_use_modindex = False
html_use_index = False
html_copy_source = False

default_role = 'any'
