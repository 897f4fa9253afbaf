"""The ground floor: atomic file writes and weights files (:mod:`.io`), progress bars (:mod:`.progress`),
size limits (:mod:`.limits`) and reading the arguments of intercepted torch calls (:mod:`.calls`).
Every other package may import these modules; they import nothing of weightviz but :mod:`weightviz.errors`."""
