"""Name -> class registries with Dassl's semantics (key is the class ``__name__``; duplicates are errors)."""
import difflib

from .errors import ConfigError


class Registry:
    def __init__(self, name):
        self._name = name
        self._obj_map = {}

    def _do_register(self, name, obj, force=False):
        if name in self._obj_map and not force:
            raise KeyError(f'An object named "{name}" was already registered in "{self._name}" registry')
        self._obj_map[name] = obj

    def register(self, obj=None, force=False):
        """Decorator factory when called without ``obj`` (returns the class); registers ``obj`` otherwise."""
        if obj is None:
            def wrapper(fn_or_class):
                self._do_register(fn_or_class.__name__, fn_or_class, force=force)
                return fn_or_class
            return wrapper
        self._do_register(obj.__name__, obj, force=force)
        return None

    def get(self, name):
        if name not in self._obj_map:
            raise KeyError(f'Object name "{name}" does not exist in "{self._name}" registry')
        return self._obj_map[name]

    def registered_names(self):
        return list(self._obj_map.keys())

    def __contains__(self, name):
        return name in self._obj_map


def check_availability(requested, available, key=None):
    """Raise a ConfigError naming ``key`` when ``requested`` is not one of ``available`` (with a hint)."""
    if requested in available:
        return
    close = difflib.get_close_matches(str(requested), [str(a) for a in available], n=1)
    hint = f' (did you mean "{close[0]}"?)' if close else ""
    where = f"{key}: " if key else ""
    raise ConfigError(f'{where}"{requested}" is not one of {sorted(available)}{hint}')
