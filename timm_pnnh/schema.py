"""What the JSON files the project writes and reads back must hold, and the one check of it.

A schema is a function ``check(value, field)`` that returns ``value`` or raises ``SchemaError`` naming
the field (``summary[0].acc_mean``), its value and what is allowed; the builders below (``number``,
``text``, ``boolean``, ``items``, ``mapping``, ``fields``, ``anything``) make them. ``read_json`` reads a
file and checks it: a missing, empty, cut-off or non-JSON file, or one whose content breaks the schema,
is a ``UsageError`` naming the parameter, the file, the field and the value.

The files: ``RUN_RECORD`` (``OUT/runs/*.json`` of ``timm-pnnh study``; a bad one is run again),
``SPEED_REPORT`` (``OUT/speed.json``; a bad one is measured again), ``STUDY`` (``OUT/study.json``, read
by ``timm-pnnh report``) and ``VALIDATE_RESULT`` (an entry of timm's ``validate.py --results-file``,
read by ``timm-pnnh publish``). Every field the project reads is checked: its type (a bool is not a
number), finiteness (NaN only where the project writes it: the retention of a diverged run), its range,
and its presence unless it is optional. Other keys are allowed.
"""
import json
import math
import os
from typing import Any, Callable, Dict, Optional

from timm_pnnh.errors import UsageError, check_input_file

__all__ = ['SchemaError', 'number', 'text', 'boolean', 'items', 'mapping', 'fields', 'anything', 'read_json', 'check_json',
           'RUN_RECORD', 'SPEED_REPORT', 'STUDY', 'VALIDATE_RESULT']

Check = Callable[[Any, str], Any]


class SchemaError(ValueError):
    """A field of a JSON file that is missing or not what the project wrote."""


def _bad(field: str, value: Any, allowed: str) -> SchemaError:
    shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + '...'
    return SchemaError(f'{field}={shown} is not allowed: {allowed}')


def _optional(check: Check, none: bool) -> Check:
    return (lambda value, field: None if value is None else check(value, field)) if none else check


def number(low: Optional[float] = None, high: Optional[float] = None, integer: bool = False, above: bool = False,
           finite: bool = True, nan: bool = False, none: bool = False) -> Check:
    """A number (not a bool) in [``low``, ``high``] (``above``: > ``low``); ``integer``: an int; ``finite``
    False allows inf and NaN, ``nan`` NaN alone; ``none`` allows null."""
    kind = 'an integer' if integer else 'a number'
    bounds = ('' if low is None else f' > {low:g}' if above else f' >= {low:g}') if high is None else \
        f' <= {high:g}' if low is None else f' in [{low:g}, {high:g}]'
    allowed = f'it must be {kind}{bounds}' + (' or NaN' if nan else '') + (' or null' if none else '')

    def check(value, field):
        if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
            raise _bad(field, value, allowed)
        if isinstance(value, float) and math.isnan(value) and (nan or not finite):
            return value
        if finite and not math.isfinite(value):
            raise _bad(field, value, allowed)
        if low is not None and (value <= low if above else value < low) or high is not None and value > high:
            raise _bad(field, value, allowed)
        return value
    return _optional(check, none)


def _of_type(kind: type, name: str, none: bool) -> Check:
    def check(value, field):
        if not isinstance(value, kind):
            raise _bad(field, value, f'it must be {name}' + (' or null' if none else ''))
        return value
    return _optional(check, none)


def text(none: bool = False) -> Check:
    """A string; ``none`` allows null."""
    return _of_type(str, 'a string', none)


def boolean(none: bool = False) -> Check:
    """true or false; ``none`` allows null."""
    return _of_type(bool, 'true or false', none)


def anything(value, field):
    return value


def items(item: Check, min_len: int = 0, none: bool = False) -> Check:
    """A list of ``item``s, at least ``min_len`` of them."""
    def check(value, field):
        if not isinstance(value, list) or len(value) < min_len:
            raise _bad(field, value, f'it must be a list of at least {min_len} entries' if min_len else
                              'it must be a list')
        for i, entry in enumerate(value):
            item(entry, f'{field}[{i}]')
        return value
    return _optional(check, none)


def mapping(value_check: Check = anything, none: bool = False) -> Check:
    """An object whose every value is a ``value_check``."""
    def check(value, field):
        if not isinstance(value, dict):
            raise _bad(field, value, 'it must be an object')
        for key, entry in value.items():
            value_check(entry, f'{field}[{key!r}]')
        return value
    return _optional(check, none)


def fields(required: Dict[str, Check], optional: Optional[Dict[str, Check]] = None, none: bool = False,
           rule: Optional[Callable[[Dict], Optional[str]]] = None) -> Check:
    """An object with the ``required`` keys (and the ``optional`` ones, when present), each checked;
    ``rule(obj)`` returns what is wrong with the object as a whole, or None."""
    def check(value, field):
        if not isinstance(value, dict):
            raise _bad(field or 'the file', value, 'it must be an object')
        prefix = f'{field}.' if field else ''
        for key, key_check in required.items():
            if key not in value:
                raise SchemaError(f'{prefix}{key} is missing')
            key_check(value[key], prefix + key)
        for key, key_check in (optional or {}).items():
            if key in value:
                key_check(value[key], prefix + key)
        problem = rule(value) if rule else None
        if problem:
            raise SchemaError(f'{field or "the file"}: {problem}')
        return value
    return _optional(check, none)


def read_json(arg: Optional[str], path: os.PathLike, schema: Check, what: str) -> Any:
    """The JSON file ``path`` (given as ``arg``; None: a file the project found itself), checked against
    ``schema``; a UsageError naming ``arg``, the file, and the field and value that break the schema, when it
    is missing, not JSON or not a ``what``."""
    name = str(path) if arg is None else f'{arg}={str(path)!r}'
    if arg is not None:
        check_input_file(arg, str(path))
    try:
        with open(path, encoding='utf-8') as f:
            obj = json.load(f)
    except FileNotFoundError:
        raise UsageError(f'{name}: no such file') from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        if isinstance(e, json.JSONDecodeError):
            reason = 'it is empty' if not e.doc.strip() else f'cut off or damaged at line {e.lineno} column {e.colno}: {e.msg}'
        else:
            reason = f'{type(e).__name__}: {e}'
        raise UsageError(f'{name} is not a JSON file ({reason}); give {what}') from None
    return check_json(name, obj, schema, what)


def check_json(name: str, obj: Any, schema: Check, what: str) -> Any:
    """``obj`` (read from the file ``name``) if it fits ``schema``, else a UsageError naming the field and value."""
    try:
        return schema(obj, '')
    except SchemaError as e:
        raise UsageError(f'{name} is not {what}: {e}') from None


# ------------------------------------------------------------------------------------------------ the files

def _same_length(*keys: str) -> Callable[[Dict], Optional[str]]:
    def rule(obj):
        lengths = [len(obj[k]) for k in keys]
        return None if len(set(lengths)) == 1 else f'{", ".join(keys)} must have the same length (they have {lengths})'
    return rule


COUNT = number(1, integer=True)
STEP = number(0, integer=True)
ACCURACY = number(0, 100)
CKA_ROUNDING = 1e-9  # a linear CKA of 1 computed in float64 can end a rounding error above it

RETENTION_ROW = fields(dict(index=COUNT, name=text(), shape=items(COUNT), r2=number(high=1, nan=True),
                            cka=number(0, 1 + CKA_ROUNDING, nan=True), alive=number(0, 1, nan=True)))
RETENTION = items(RETENTION_ROW, min_len=1)

RUN_RECORD = fields(
    dict(label=text(), family=text(), model=text(), arch=text(), depth=number(1, integer=True, none=True),
         model_kwargs=mapping(), seed=number(integer=True), params=COUNT, test_acc=ACCURACY,
         final_train_loss=number(finite=False), diverged_step=number(0, integer=True, none=True),
         curve=items(fields(dict(step=STEP, test_acc=ACCURACY), dict(epoch=number(0, above=True),
                                                                    train_loss=number(finite=False)))),
         blocks=COUNT, retention_init=RETENTION, retention_trained=RETENTION, seconds=number(0),
         settings=mapping(), settings_digest=text()),
    dict(resumed_step=number(0, integer=True, none=True), cpu=text(none=True)),
    rule=lambda r: (None if len(r['retention_init']) == len(r['retention_trained']) == r['blocks'] else
                    f"blocks, retention_init and retention_trained disagree on the number of blocks ({r['blocks']}, "
                    f"{len(r['retention_init'])}, {len(r['retention_trained'])})"))

POSITIVE = number(0, above=True)
HARDWARE = fields(dict(cpu=text(none=True), cpu_count=COUNT, torch_threads=COUNT, torch=text(), timm=text()),
                  dict(device=text(), gpu=text(none=True), python=text(), platform=text()))
BENCH_CONFIG = fields(dict(device=text(), device_name=text(none=True), threads=COUNT, batch_size=COUNT,
                           channels_last=boolean(), amp=text(none=True)))

SPEED_REPORT = fields(
    dict(config=BENCH_CONFIG,
         results=mapping(fields(dict(params_m=POSITIVE, train_img_s=POSITIVE, infer_img_s=POSITIVE,
                                     deploy_img_s=POSITIVE, saved_mb=number(0), deploy_params_m=POSITIVE))),
         ratios=mapping(mapping(POSITIVE)),
         settings=fields(dict(specs=mapping(text()), hardware=mapping()))),
    rule=lambda s: next((f'settings.specs[{label!r}]={spec!r} has no entry in results' for label, spec in
                         s['settings']['specs'].items() if spec not in s['results']), None))

SUMMARY_ROW = fields(
    dict(label=text(), family=text(), model=text(), arch=text(), depth=number(1, integer=True, none=True),
         model_kwargs=mapping(), blocks=COUNT, params=COUNT, seeds=items(number(integer=True), min_len=1),
         test_accs=items(ACCURACY, min_len=1), acc_mean=ACCURACY, acc_std=number(0, none=True),
         diverged_seeds=items(number(integer=True)),
         epochs=items(fields(dict(epoch=number(0, above=True), acc_mean=ACCURACY, acc_std=number(0, none=True),
                                  runs=COUNT))),
         train_img_s=number(0, above=True, none=True), infer_img_s=number(0, above=True, none=True),
         deploy_img_s=number(0, above=True, none=True), saved_mb=number(0, none=True),
         deploy_params_m=number(0, above=True, none=True), retention_init=RETENTION, retention_trained=RETENTION),
    rule=_same_length('seeds', 'test_accs'))

STUDY = fields(
    dict(command=text(), date=text(), hardware=HARDWARE,
         recipe=fields(dict(steps=COUNT, batch_size=COUNT, lr=number(0), warmup_fraction=number(0, 1),
                            weight_decay=number(0)), dict(opt=text(), channels_last=boolean(), amp=text(none=True))),
         seeds=items(number(integer=True), min_len=1), data=text(), train_seconds=number(0), plots=items(text()),
         summary=items(SUMMARY_ROW)),
    dict(preset=text(), epochs=number(1, integer=True, none=True), depths=items(number(1, integer=True)),
         speed=fields(dict(config=BENCH_CONFIG), none=True), runs=items(RUN_RECORD), pending=items(text())))

VALIDATE_RESULT = fields(dict(model=text(), top1=ACCURACY, top5=ACCURACY),
                         dict(param_count=number(0), img_size=COUNT, crop_pct=number(0, above=True),
                              interpolation=text()))
