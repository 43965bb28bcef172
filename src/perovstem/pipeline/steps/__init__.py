"""Built-in pipeline steps, one module per sub-package.

Importing this package registers every step; a step module only imports its sub-package
inside the step function, so registering never fails even when the sub-package is absent
(the step is then reported as not available).
"""

from perovstem.pipeline.steps import (
    atoms,  # noqa: F401, E402
    atoms_map,  # noqa: F401
    atoms_strain,  # noqa: F401
    core,  # noqa: F401
    insitu,  # noqa: F401, E402
    quantify,  # noqa: F401, E402
    simulate,  # noqa: F401, E402
    tomo,  # noqa: F401, E402
)
