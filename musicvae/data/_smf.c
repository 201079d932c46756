/*
 * A Standard MIDI File reader that yields exactly what pretty_midi (over mido) yields.
 *
 * `parse(data, bad_denominators)` returns
 *     (resolution, tempos, time_signatures, notes, total_time)
 * where tempos are (time, qpm) tuples from pretty_midi's tick scales, time signatures are
 * (time, numerator, log2(denominator)) tuples from track 0, and notes are `Note` objects (the
 * class registered with `set_note_type`) grouped by pretty_midi instrument, in its order.
 *
 * Fidelity rules (see pretty_midi.PrettyMIDI.__init__ and mido.midifiles):
 *   - a file is accepted exactly when mido parses it and pretty_midi builds from it: every message
 *     that mido would refuse (bad data bytes, undefined status, truncated or malformed meta
 *     events that mido decodes, sysex data > 127, running status without a status, ...) is an
 *     error here, as are an empty track, no tracks, a tick >= 1e7 (pretty_midi's MAX_TICK),
 *     resolution 0, a zero tempo or zero numerator on track 0, and (negative division only) a
 *     note ending before it starts or a track-0 meter/key at a negative time;
 *   - mido builds unknown meta events without their delta time, so they do not advance the clock;
 *   - tempos and time signatures come from track 0 only; repeated tick scales are dropped and
 *     tempo events at tick 0 restart the list, as pretty_midi does;
 *   - tick -> seconds uses pretty_midi's per-interval arithmetic (base + scale * k), so the
 *     doubles are bit-identical (build with -ffp-contract=off: no fused multiply-add);
 *   - notes: instruments keyed by (program at note-off, channel, track) created on their first
 *     closed note; a note-off (or note-on with velocity 0) closes every open note of its
 *     (channel, pitch) that did not start on the same tick; the same-tick ones survive only
 *     when some other note was closed.
 * Every read is bounds-checked; memory use is linear in the input size.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <string.h>
#include <limits.h>

#define MAX_TICK 10000000LL
#define MAX_MESSAGE_LENGTH 1000000ULL
#define VARINT_CAP (1ULL << 50)

static PyObject *SmfError;

/* ---- the Note class and its slots ---------------------------------------------------- */
static PyTypeObject *note_type = NULL;
static const char *note_fields[9] = {"pitch", "velocity", "start_time", "end_time", "instrument",
                                     "program", "is_drum", "quantized_start_step", "quantized_end_step"};
static Py_ssize_t note_offsets[9];
static int note_direct = 0; /* 1 when every field is a plain object slot we can fill directly */

static PyObject *set_note_type(PyObject *self, PyObject *cls) {
    if (!PyType_Check(cls)) {
        PyErr_SetString(PyExc_TypeError, "expected a class");
        return NULL;
    }
    PyTypeObject *tp = (PyTypeObject *)cls;
    int direct = 1;
    for (int i = 0; i < 9; i++) {
        PyObject *descr = PyDict_GetItemString(tp->tp_dict, note_fields[i]); /* borrowed */
        if (descr == NULL || Py_TYPE(descr) != &PyMemberDescr_Type) {
            direct = 0;
            break;
        }
        PyMemberDef *m = ((PyMemberDescrObject *)descr)->d_member;
        if (m->type != T_OBJECT_EX || (m->flags & READONLY)) {
            direct = 0;
            break;
        }
        note_offsets[i] = m->offset;
    }
    /* Filling slots by hand is only valid for a plain slotted class allocated by tp_alloc. */
    if (tp->tp_itemsize != 0 || tp->tp_alloc == NULL || tp->tp_dictoffset != 0) direct = 0;
    Py_INCREF(cls);
    Py_XDECREF((PyObject *)note_type);
    note_type = tp;
    note_direct = direct;
    return PyBool_FromLong(direct);
}

/* Steals nothing; returns a new Note or NULL. */
static PyObject *make_note(long pitch, long velocity, double start, double end, Py_ssize_t instrument,
                           long program, int is_drum, PyObject *zero) {
    PyObject *vals[9];
    vals[0] = PyLong_FromLong(pitch);
    vals[1] = PyLong_FromLong(velocity);
    vals[2] = PyFloat_FromDouble(start);
    vals[3] = PyFloat_FromDouble(end);
    vals[4] = PyLong_FromSsize_t(instrument);
    vals[5] = PyLong_FromLong(program);
    vals[6] = is_drum ? Py_True : Py_False;
    Py_INCREF(vals[6]);
    vals[7] = zero;
    Py_INCREF(zero);
    vals[8] = zero;
    Py_INCREF(zero);
    PyObject *obj = NULL;
    for (int i = 0; i < 9; i++)
        if (vals[i] == NULL) goto done;
    if (note_direct) {
        obj = note_type->tp_alloc(note_type, 0);
        if (obj == NULL) goto done;
        for (int i = 0; i < 9; i++) {
            *(PyObject **)((char *)obj + note_offsets[i]) = vals[i];
            vals[i] = NULL; /* reference moved into the object */
        }
    } else {
        obj = PyObject_Vectorcall((PyObject *)note_type, vals, 9, NULL);
    }
done:
    for (int i = 0; i < 9; i++) Py_XDECREF(vals[i]);
    return obj;
}

/* ---- fast note copies for sequences.py ---------------------------------------------- */
#define NOTE_PITCH 0
#define NOTE_START 2
#define NOTE_END 3
#define NOTE_QSTART 7
#define NOTE_QEND 8

static inline PyObject *note_slot(PyObject *note, int i) {
    return *(PyObject **)((char *)note + note_offsets[i]);
}

/* A copy of `note` with slot `i` replaced (new reference) when `value` is not NULL. */
static PyObject *clone_note(PyObject *note) {
    PyObject *obj = note_type->tp_alloc(note_type, 0);
    if (obj == NULL) return NULL;
    for (int i = 0; i < 9; i++) {
        PyObject *v = note_slot(note, i);
        Py_XINCREF(v);
        *(PyObject **)((char *)obj + note_offsets[i]) = v;
    }
    return obj;
}

static void set_slot(PyObject *obj, int i, PyObject *value) { /* steals value */
    PyObject **p = (PyObject **)((char *)obj + note_offsets[i]);
    PyObject *old = *p;
    *p = value;
    Py_XDECREF(old);
}

static int all_plain_notes(PyObject *notes) {
    if (!note_direct || !PyList_CheckExact(notes)) return 0;
    Py_ssize_t n = PyList_GET_SIZE(notes);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *note = PyList_GET_ITEM(notes, i);
        if (Py_TYPE(note) != note_type) return 0;
        for (int k = 0; k < 9; k++)
            if (note_slot(note, k) == NULL) return 0;
    }
    return 1;
}

/* quantize_notes(notes, steps_per_second[, offset, limit]) -> (copies with quantized steps, max end step)
 * or None. With an offset the copies are also moved as shift_notes moves them (start - offset,
 * min(end, limit) - offset) and quantised from the moved times: split then quantize in one copy.
 * Steps are int(t * sps + 0.5) exactly as note_seq computes them, an empty note lasting one step.
 * None means "take the Python path" (unusual objects, non-float times, negative or huge steps),
 * which then gives the same result or raises the same error. */
static PyObject *quantize_notes(PyObject *self, PyObject *args) {
    PyObject *notes, *offset_obj = Py_None;
    double sps, limit = 0.0;
    if (!PyArg_ParseTuple(args, "Od|Od", &notes, &sps, &offset_obj, &limit)) return NULL;
    if (!all_plain_notes(notes)) Py_RETURN_NONE;
    /* with an offset: the notes of a piece cut at [offset, limit), moved as shift_notes moves them */
    int shift = offset_obj != Py_None;
    if (shift && !PyFloat_CheckExact(offset_obj)) Py_RETURN_NONE;
    double offset = shift ? PyFloat_AS_DOUBLE(offset_obj) : 0.0;
    Py_ssize_t n = PyList_GET_SIZE(notes);
    long long max_end = LLONG_MIN;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *note = PyList_GET_ITEM(notes, i);
        PyObject *s = note_slot(note, NOTE_START), *e = note_slot(note, NOTE_END);
        if (!PyFloat_CheckExact(s) || !PyFloat_CheckExact(e)) Py_RETURN_NONE;
        double sv = PyFloat_AS_DOUBLE(s), ev = PyFloat_AS_DOUBLE(e);
        if (shift) {
            sv = sv - offset;
            ev = (limit < ev ? limit : ev) - offset;
        }
        double qs = sv * sps + 0.5, qe = ev * sps + 0.5;
        /* negative (an error) or beyond exact int64 handling: let Python decide */
        if (!(qs >= 0 && qs < 4e18 && qe >= 0 && qe < 4e18)) Py_RETURN_NONE;
    }
    PyObject *out = PyList_New(n);
    if (out == NULL) return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *note = PyList_GET_ITEM(notes, i);
        double sv = PyFloat_AS_DOUBLE(note_slot(note, NOTE_START)), ev = PyFloat_AS_DOUBLE(note_slot(note, NOTE_END));
        if (shift) {
            sv = sv - offset;
            ev = (limit < ev ? limit : ev) - offset;
        }
        long long start = (long long)(sv * sps + 0.5);
        long long end = (long long)(ev * sps + 0.5);
        if (end == start) end += 1;
        if (end > max_end) max_end = end;
        PyObject *copy = clone_note(note);
        if (copy == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, i, copy);
        if (shift) {
            PyObject *a = PyFloat_FromDouble(sv), *b = PyFloat_FromDouble(ev);
            if (a == NULL || b == NULL) {
                Py_XDECREF(a);
                Py_XDECREF(b);
                Py_DECREF(out);
                return NULL;
            }
            set_slot(copy, NOTE_START, a);
            set_slot(copy, NOTE_END, b);
        }
        PyObject *qs = PyLong_FromLongLong(start), *qe = PyLong_FromLongLong(end);
        if (qs == NULL || qe == NULL) {
            Py_XDECREF(qs);
            Py_XDECREF(qe);
            Py_DECREF(out);
            return NULL;
        }
        set_slot(copy, NOTE_QSTART, qs);
        set_slot(copy, NOTE_QEND, qe);
    }
    if (n == 0) return Py_BuildValue("(NO)", out, Py_None);
    return Py_BuildValue("(NL)", out, max_end);
}

/* shift_notes(notes, offset, limit) -> copies with start - offset and min(end, limit) - offset,
 * or None for unusual objects (the Python path then does the same). */
static PyObject *shift_notes(PyObject *self, PyObject *args) {
    PyObject *notes;
    double offset, limit;
    if (!PyArg_ParseTuple(args, "Odd", &notes, &offset, &limit)) return NULL;
    if (!all_plain_notes(notes)) Py_RETURN_NONE;
    Py_ssize_t n = PyList_GET_SIZE(notes);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *note = PyList_GET_ITEM(notes, i);
        if (!PyFloat_CheckExact(note_slot(note, NOTE_START)) || !PyFloat_CheckExact(note_slot(note, NOTE_END)))
            Py_RETURN_NONE;
    }
    PyObject *out = PyList_New(n);
    if (out == NULL) return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *note = PyList_GET_ITEM(notes, i);
        double start = PyFloat_AS_DOUBLE(note_slot(note, NOTE_START));
        double end = PyFloat_AS_DOUBLE(note_slot(note, NOTE_END));
        end = (limit < end ? limit : end) - offset; /* Python's min(end, limit): end unless limit < end */
        PyObject *copy = clone_note(note);
        PyObject *s = PyFloat_FromDouble(start - offset), *e = PyFloat_FromDouble(end);
        if (copy == NULL || s == NULL || e == NULL) {
            Py_XDECREF(copy);
            Py_XDECREF(s);
            Py_XDECREF(e);
            Py_DECREF(out);
            return NULL;
        }
        set_slot(copy, NOTE_START, s);
        set_slot(copy, NOTE_END, e);
        PyList_SET_ITEM(out, i, copy);
    }
    return out;
}

/* melody_events(notes, begin, start_step, gap_steps) -> list of melody events, or None.
 * The note loop of melody.melody_from_quantized over notes[begin:] (already ordered by start and
 * descending pitch): skip drums and silent notes, keep the highest note per onset, stop at a
 * gap of gap_steps, and write each note as pitch, NO_EVENT..., NOTE_OFF, truncating the events
 * after an earlier note's end. None (for anything unusual: non-int fields, empty or reversed
 * notes, huge steps) means "run the Python loop", which is the reference. */
#define MEL_NO_EVENT (-2)
#define MEL_NOTE_OFF (-1)
#define MEL_MAX_STEPS (1LL << 26)
#define NOTE_VELOCITY 1
#define NOTE_IS_DRUM 6

static int small_int(PyObject *o, long long lo, long long hi, long long *out) {
    if (!PyLong_CheckExact(o)) return 0;
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (overflow || v < lo || v > hi) return 0;
    *out = v;
    return 1;
}

static PyObject *melody_events(PyObject *self, PyObject *args) {
    PyObject *notes;
    Py_ssize_t begin;
    long long start_step;
    double gap_steps;
    if (!PyArg_ParseTuple(args, "OnLd", &notes, &begin, &start_step, &gap_steps)) return NULL;
    if (!all_plain_notes(notes)) Py_RETURN_NONE;
    Py_ssize_t n = PyList_GET_SIZE(notes);
    if (begin < 0 || begin > n) Py_RETURN_NONE;
    const long long lim = 1LL << 52;
    if (start_step < -lim || start_step > lim) Py_RETURN_NONE;
    int *ev = NULL;
    long long len = 0, cap = 0, last_on = 0, last_off = 0;
    PyObject *result = NULL;
    for (Py_ssize_t i = begin; i < n; i++) {
        PyObject *note = PyList_GET_ITEM(notes, i);
        PyObject *drum = note_slot(note, NOTE_IS_DRUM);
        long long velocity, qs, qe, pitch;
        if (drum != Py_True && drum != Py_False) goto fallback;
        if (!small_int(note_slot(note, NOTE_VELOCITY), LLONG_MIN, LLONG_MAX, &velocity)) goto fallback;
        if (drum == Py_True || velocity == 0) continue;
        if (!small_int(note_slot(note, NOTE_QSTART), -lim, lim, &qs)) goto fallback;
        if (!small_int(note_slot(note, NOTE_QEND), -lim, lim, &qe)) goto fallback;
        if (!small_int(note_slot(note, NOTE_PITCH), 0, INT_MAX, &pitch)) goto fallback;
        long long start = qs - start_step, end = qe - start_step;
        if (len > 0) {
            if (start == last_on) continue;
            if ((double)(start - last_off) >= gap_steps) break;
        }
        if (!(end > start) || start < 0 || end >= MEL_MAX_STEPS) goto fallback;
        if (end + 1 > cap) {
            long long ncap = cap ? cap : 64;
            while (ncap < end + 1) ncap *= 2;
            int *nev = PyMem_Realloc(ev, (size_t)ncap * sizeof(int));
            if (nev == NULL) {
                PyErr_NoMemory();
                goto done;
            }
            ev = nev;
            cap = ncap;
        }
        for (long long k = len; k < end + 1; k++) ev[k] = MEL_NO_EVENT; /* padding (extend) */
        len = end + 1;                                                   /* or truncation */
        ev[start] = (int)pitch;
        for (long long k = start + 1; k < end; k++) ev[k] = MEL_NO_EVENT;
        ev[end] = MEL_NOTE_OFF;
        last_on = start;
        last_off = end;
    }
    result = PyList_New((Py_ssize_t)len);
    if (result == NULL) goto done;
    for (long long k = 0; k < len; k++) {
        PyObject *v = PyLong_FromLong(ev[k]);
        if (v == NULL) {
            Py_CLEAR(result);
            goto done;
        }
        PyList_SET_ITEM(result, (Py_ssize_t)k, v);
    }
    goto done;
fallback:
    result = Py_None;
    Py_INCREF(result);
done:
    PyMem_Free(ev);
    return result;
}

/* ---- growable arrays ----------------------------------------------------------------- */
typedef struct {
    char *data;
    size_t len, cap, elsize;
} Vec;

static void *vec_push(Vec *v) {
    if (v->len == v->cap) {
        size_t ncap = v->cap ? v->cap * 2 : 8;
        if (ncap > ((size_t)PY_SSIZE_T_MAX) / v->elsize) {
            PyErr_NoMemory();
            return NULL;
        }
        char *nd = PyMem_Realloc(v->data, ncap * v->elsize);
        if (nd == NULL) {
            PyErr_NoMemory();
            return NULL;
        }
        v->data = nd;
        v->cap = ncap;
    }
    return v->data + (v->len++) * v->elsize;
}

static void vec_free(Vec *v) {
    PyMem_Free(v->data);
    v->data = NULL;
    v->len = v->cap = 0;
}

typedef struct {
    int64_t tick;
    long value;
} TempoEv;
typedef struct {
    int64_t tick;
    int numerator, exponent;
} TsEv;
typedef struct {
    int64_t start, end;
    int32_t instrument;
    uint8_t pitch, velocity;
} NoteEv;
typedef struct {
    int64_t tick;
    int velocity;
} OpenNote;
typedef struct {
    int program, channel;
} Inst;
typedef struct {
    uint64_t generation;
    int track, index;
} InstSlot;

typedef struct {
    const unsigned char *p;
    Py_ssize_t end, pos;
} Rd;

typedef struct {
    Vec tempos, tss, kss, notes, insts; /* kss: key signature ticks on track 0 */
    Vec open[16 * 128];     /* open notes per (channel, pitch), reset per track */
    uint16_t touched[16 * 128]; /* keys given an open note in this track (each listed once) */
    uint8_t is_touched[16 * 128];
    size_t ntouched;
    int big_open; /* some open list grew large: shrink them after the call */
    InstSlot inst_map[16][128];
    uint64_t generation; /* inst_map entries from earlier calls are stale */
    const unsigned char *bad_denominators; /* 256 flags: mido refuses 2**k (math.log quirk) */
} State;

/* One State, reused by every call (the GIL is held throughout a parse): allocating and clearing
 * ~100 KB per file would cost more than parsing a typical file. */
static State *state = NULL;

static int fail(const char *msg) {
    PyErr_SetString(SmfError, msg);
    return -1;
}

static inline int rd_byte(Rd *r, int *out) {
    if (r->pos >= r->end) return fail("unexpected end of track");
    *out = r->p[r->pos++];
    return 0;
}

/* mido reads variable-length quantities of any length; values saturate far above every limit. */
static int rd_varint(Rd *r, uint64_t *out) {
    uint64_t v = 0;
    int b;
    for (;;) {
        if (rd_byte(r, &b)) return -1;
        if (v < VARINT_CAP) v = (v << 7) | (uint64_t)(b & 0x7f);
        if (b < 0x80) break;
    }
    *out = v;
    return 0;
}

static inline uint32_t be32(const unsigned char *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | (uint32_t)p[3];
}

static void reset_open(State *s) {
    for (size_t i = 0; i < s->ntouched; i++) {
        s->open[s->touched[i]].len = 0;
        s->is_touched[s->touched[i]] = 0;
    }
    s->ntouched = 0;
}

static int instrument_index(State *s, int program, int channel, int track) {
    InstSlot *slot = &s->inst_map[channel][program];
    if (slot->generation == s->generation && slot->track == track) return slot->index;
    Inst *inst = vec_push(&s->insts);
    if (inst == NULL) return -1;
    inst->program = program;
    inst->channel = channel;
    slot->generation = s->generation;
    slot->track = track;
    slot->index = (int)(s->insts.len - 1);
    return slot->index;
}

static int note_off(State *s, int channel, int pitch, int64_t tick, int program, int track) {
    Vec *open = &s->open[channel * 128 + pitch];
    if (open->len == 0) return 0; /* spurious note-off */
    OpenNote *on = (OpenNote *)open->data;
    size_t kept = 0, closed = 0;
    for (size_t i = 0; i < open->len; i++) {
        if (on[i].tick == tick) {
            on[kept++] = on[i];
            continue;
        }
        int index = instrument_index(s, program, channel, track);
        if (index < 0) return -1;
        NoteEv *n = vec_push(&s->notes);
        if (n == NULL) return -1;
        n->start = on[i].tick;
        n->end = tick;
        n->instrument = index;
        n->pitch = (uint8_t)pitch;
        n->velocity = (uint8_t)on[i].velocity;
        closed++;
    }
    open->len = (closed > 0 && kept > 0) ? kept : 0;
    return 0;
}

static int is_known_meta(int type) {
    switch (type) {
    case 0x00: case 0x01: case 0x02: case 0x03: case 0x04: case 0x05: case 0x06: case 0x07: case 0x09:
    case 0x20: case 0x21: case 0x2f: case 0x51: case 0x54: case 0x58: case 0x59: case 0x7f:
        return 1;
    default:
        return 0;
    }
}

static inline int advance(int64_t *tick, uint64_t delta) {
    if (delta >= (uint64_t)MAX_TICK || *tick + (int64_t)delta >= MAX_TICK)
        return fail("MIDI file has a tick >= 1e7 (pretty_midi's MAX_TICK), it is likely corrupt");
    *tick += (int64_t)delta;
    return 0;
}

static int parse_track(State *s, const unsigned char *data, Py_ssize_t n, Py_ssize_t *pos, int track) {
    if (n - *pos < 8) return fail("truncated track header");
    if (memcmp(data + *pos, "MTrk", 4) != 0) return fail("no MTrk header at start of track");
    uint32_t size = be32(data + *pos + 4);
    *pos += 8;
    /* mido reads on until the chunk ends exactly on a message boundary; a chunk reaching past
     * the end of the file (or a message straddling its end) always ends in an error there. */
    if ((uint64_t)size > (uint64_t)(n - *pos)) return fail("track chunk runs past the end of the file");
    Rd r = {data, *pos + (Py_ssize_t)size, *pos};
    *pos += size;

    reset_open(s);
    int program[16] = {0};
    int last_status = -1;
    int64_t tick = 0;
    size_t events = 0;

    while (r.pos != r.end) {
        uint64_t delta;
        int status, b;
        if (rd_varint(&r, &delta)) return -1;
        if (rd_byte(&r, &status)) return -1;
        int peek = -1;
        if (status < 0x80) {
            if (last_status < 0) return fail("running status without last_status");
            peek = status;
            status = last_status;
        } else if (status != 0xff) {
            last_status = status;
        }
        events++;

        if (status == 0xff) {
            int type;
            uint64_t len;
            if (rd_byte(&r, &type)) return -1;
            /* mido builds unknown meta types without their delta time: they do not move the clock */
            if (!is_known_meta(type)) delta = 0;
            if (advance(&tick, delta)) return -1;
            if (rd_varint(&r, &len)) return -1;
            if (len > MAX_MESSAGE_LENGTH) return fail("meta message length exceeds maximum length");
            if (len > (uint64_t)(r.end - r.pos)) return fail("unexpected end of track in meta message");
            const unsigned char *d = data + r.pos;
            r.pos += (Py_ssize_t)len;
            switch (type) {
            case 0x00: /* sequence_number */
                if (len == 1) return fail("short sequence_number");
                break;
            case 0x20: /* channel_prefix */
                if (len < 1) return fail("short channel_prefix");
                break;
            case 0x51: /* set_tempo */
                if (len < 3) return fail("short set_tempo");
                if (track == 0) {
                    long tempo = ((long)d[0] << 16) | ((long)d[1] << 8) | (long)d[2];
                    if (tempo == 0) return fail("tempo of 0 microseconds per beat");
                    TempoEv *t = vec_push(&s->tempos);
                    if (t == NULL) return -1;
                    t->tick = tick;
                    t->value = tempo;
                }
                break;
            case 0x54: /* smpte_offset */
                if (len < 5 || d[0] >= 0x80 || d[1] > 59 || d[2] > 59 || d[4] > 99)
                    return fail("invalid smpte_offset");
                break;
            case 0x58: /* time_signature */
                if (len < 4) return fail("short time_signature");
                if (s->bad_denominators[d[1]]) return fail("denominator must be a power of 2");
                if (track == 0) {
                    if (d[0] == 0) return fail("time signature numerator must be positive");
                    TsEv *t = vec_push(&s->tss);
                    if (t == NULL) return -1;
                    t->tick = tick;
                    t->numerator = d[0];
                    t->exponent = d[1];
                }
                break;
            case 0x59: { /* key_signature */
                if (len < 2) return fail("short key_signature");
                int key = (signed char)d[0];
                if (key < -7 || key > 7 || d[1] > 1) return fail("could not decode key signature");
                if (track == 0) {
                    int64_t *t = vec_push(&s->kss);
                    if (t == NULL) return -1;
                    *t = tick;
                }
                break;
            }
            default:
                break;
            }
        } else if (status == 0xf0 || status == 0xf7) {
            /* sysex; under running status mido drops the data byte it read as status */
            uint64_t len;
            if (advance(&tick, delta)) return -1;
            if (rd_varint(&r, &len)) return -1;
            if (len > MAX_MESSAGE_LENGTH) return fail("sysex length exceeds maximum length");
            if (len > (uint64_t)(r.end - r.pos)) return fail("unexpected end of track in sysex");
            const unsigned char *d = data + r.pos;
            r.pos += (Py_ssize_t)len;
            size_t lo = 0, hi = (size_t)len;
            if (hi > lo && d[lo] == 0xf0) lo++;
            if (hi > lo && d[hi - 1] == 0xf7) hi--;
            for (size_t i = lo; i < hi; i++)
                if (d[i] > 127) return fail("sysex data byte must be in range 0..127");
        } else {
            int length;
            if (advance(&tick, delta)) return -1;
            if (status >= 0xf0) {
                switch (status) {
                case 0xf1: case 0xf3: length = 2; break;
                case 0xf2: length = 3; break;
                case 0xf6: case 0xf8: case 0xfa: case 0xfb: case 0xfc: case 0xfe: length = 1; break;
                default: return fail("undefined status byte");
                }
            } else {
                int hi = status & 0xf0;
                length = (hi == 0xc0 || hi == 0xd0) ? 2 : 3;
            }
            int d[2] = {0, 0};
            int nd = 0;
            if (peek >= 0) {
                if (length == 1) return fail("wrong number of bytes for a one-byte message");
                d[nd++] = peek;
            }
            while (nd < length - 1) {
                if (rd_byte(&r, &b)) return -1;
                d[nd++] = b;
            }
            for (int i = 0; i < nd; i++)
                if (d[i] > 127) return fail("data byte must be in range 0..127");
            int kind = status & 0xf0, channel = status & 0x0f;
            if (kind == 0x90 && d[1] > 0) {
                int key = channel * 128 + d[0];
                if (!s->is_touched[key]) {
                    s->is_touched[key] = 1;
                    s->touched[s->ntouched++] = (uint16_t)key;
                }
                OpenNote *on = vec_push(&s->open[key]);
                if (on == NULL) return -1;
                if (s->open[key].cap > 256) s->big_open = 1;
                on->tick = tick;
                on->velocity = d[1];
            } else if (kind == 0x80 || kind == 0x90) {
                if (note_off(s, channel, d[0], tick, program[channel], track)) return -1;
            } else if (kind == 0xc0) {
                program[channel] = d[0];
            }
        }
    }
    if (events == 0) return fail("empty track");
    return 0;
}

typedef struct {
    int64_t tick;
    double scale, base;
} Seg;

static double tick_time(const Seg *segs, size_t nseg, int64_t tick) {
    /* the last interval starting at or before `tick` wrote pretty_midi's array entry last */
    size_t lo = 0, hi = nseg; /* segs[0].tick == 0 <= tick */
    while (hi - lo > 1) {
        size_t mid = lo + (hi - lo) / 2;
        if (segs[mid].tick <= tick)
            lo = mid;
        else
            hi = mid;
    }
    return segs[lo].base + segs[lo].scale * (double)(tick - segs[lo].tick);
}

static PyObject *build_result(State *s, int resolution) {
    PyObject *tempos = NULL, *tss = NULL, *notes = NULL, *zero = NULL, *result = NULL;
    Seg *segs = NULL;
    size_t nseg = 0;
    Py_ssize_t *order = NULL, *counts = NULL;

    /* pretty_midi._load_tempo_changes */
    segs = PyMem_Malloc((s->tempos.len + 1) * sizeof(Seg));
    if (segs == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    segs[0].tick = 0;
    segs[0].scale = 60.0 / (120.0 * (double)resolution);
    nseg = 1;
    TempoEv *tev = (TempoEv *)s->tempos.data;
    for (size_t i = 0; i < s->tempos.len; i++) {
        double scale = 60.0 / ((6e7 / (double)tev[i].value) * (double)resolution);
        if (tev[i].tick == 0) {
            nseg = 1;
            segs[0].scale = scale;
        } else if (scale != segs[nseg - 1].scale) {
            segs[nseg].tick = tev[i].tick;
            segs[nseg].scale = scale;
            nseg++;
        }
    }
    /* pretty_midi._update_tick_to_time: each interval continues from the previous end */
    segs[0].base = 0.0;
    for (size_t i = 1; i < nseg; i++)
        segs[i].base = segs[i - 1].base + segs[i - 1].scale * (double)(segs[i].tick - segs[i - 1].tick);

    tempos = PyList_New((Py_ssize_t)nseg);
    if (tempos == NULL) goto done;
    for (size_t i = 0; i < nseg; i++) {
        PyObject *t = Py_BuildValue("(dd)", tick_time(segs, nseg, segs[i].tick),
                                    60.0 / (segs[i].scale * (double)resolution));
        if (t == NULL) goto done;
        PyList_SET_ITEM(tempos, (Py_ssize_t)i, t);
    }

    /* pretty_midi's KeySignature and TimeSignature refuse negative times (negative division) */
    for (size_t i = 0; i < s->kss.len; i++)
        if (!(tick_time(segs, nseg, ((int64_t *)s->kss.data)[i]) >= 0)) {
            fail("key signature at a negative time");
            goto done;
        }
    TsEv *ts = (TsEv *)s->tss.data;
    tss = PyList_New((Py_ssize_t)s->tss.len);
    if (tss == NULL) goto done;
    for (size_t i = 0; i < s->tss.len; i++) {
        double time = tick_time(segs, nseg, ts[i].tick);
        if (!(time >= 0)) {
            fail("time signature at a negative time");
            goto done;
        }
        PyObject *t = Py_BuildValue("(dii)", time, ts[i].numerator, ts[i].exponent);
        if (t == NULL) goto done;
        PyList_SET_ITEM(tss, (Py_ssize_t)i, t);
    }

    /* notes grouped by instrument (stable), as pretty_midi's instrument lists hold them */
    size_t ninst = s->insts.len, nnotes = s->notes.len;
    NoteEv *nev = (NoteEv *)s->notes.data;
    Inst *insts = (Inst *)s->insts.data;
    counts = PyMem_Calloc(ninst + 1, sizeof(Py_ssize_t));
    order = PyMem_Malloc((nnotes + 1) * sizeof(Py_ssize_t));
    if (counts == NULL || order == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (size_t i = 0; i < nnotes; i++) counts[nev[i].instrument + 1]++;
    for (size_t k = 1; k <= ninst; k++) counts[k] += counts[k - 1];
    for (size_t i = 0; i < nnotes; i++) order[counts[nev[i].instrument]++] = (Py_ssize_t)i;

    zero = PyLong_FromLong(0);
    notes = PyList_New((Py_ssize_t)nnotes);
    if (zero == NULL || notes == NULL) goto done;
    double total = 0.0;
    for (size_t k = 0; k < nnotes; k++) {
        NoteEv *e = &nev[order[k]];
        Inst *inst = &insts[e->instrument];
        double start = tick_time(segs, nseg, e->start), end = tick_time(segs, nseg, e->end);
        if (end < start) { /* pretty_midi.Note refuses it (only with a negative division) */
            fail("Note end time must be greater than start time");
            goto done;
        }
        if (end > total) total = end;
        PyObject *note = make_note(e->pitch, e->velocity, start, end, e->instrument, inst->program,
                                   inst->channel == 9, zero);
        if (note == NULL) goto done;
        PyList_SET_ITEM(notes, (Py_ssize_t)k, note);
    }
    result = Py_BuildValue("(iOOOd)", resolution, tempos, tss, notes, total);
done:
    Py_XDECREF(tempos);
    Py_XDECREF(tss);
    Py_XDECREF(notes);
    Py_XDECREF(zero);
    PyMem_Free(segs);
    PyMem_Free(order);
    PyMem_Free(counts);
    return result;
}

static PyObject *parse(PyObject *self, PyObject *args) {
    Py_buffer buf, bad;
    if (!PyArg_ParseTuple(args, "y*y*", &buf, &bad)) return NULL;
    PyObject *result = NULL;
    State *s = NULL;
    if (note_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "call set_note_type first");
        goto out;
    }
    if (bad.len != 256) {
        PyErr_SetString(PyExc_ValueError, "bad_denominators must be 256 bytes");
        goto out;
    }
    if (state == NULL) {
        state = PyMem_Calloc(1, sizeof(State));
        if (state == NULL) {
            PyErr_NoMemory();
            goto out;
        }
        state->tempos.elsize = sizeof(TempoEv);
        state->tss.elsize = sizeof(TsEv);
        state->kss.elsize = sizeof(int64_t);
        state->notes.elsize = sizeof(NoteEv);
        state->insts.elsize = sizeof(Inst);
        for (int i = 0; i < 16 * 128; i++) state->open[i].elsize = sizeof(OpenNote);
    }
    s = state;
    s->tempos.len = s->tss.len = s->kss.len = s->notes.len = s->insts.len = 0;
    reset_open(s);
    s->generation++;
    s->bad_denominators = (const unsigned char *)bad.buf;

    const unsigned char *data = (const unsigned char *)buf.buf;
    Py_ssize_t n = buf.len;
    /* mido's read_file_header: MThd, then `size` bytes of which the first 6 are read as
     * signed shorts (format, number of tracks, division). */
    if (n < 8) {
        fail("truncated file header");
        goto out;
    }
    if (memcmp(data, "MThd", 4) != 0) {
        fail("MThd not found. Probably not a MIDI file");
        goto out;
    }
    uint32_t hsize = be32(data + 4);
    Py_ssize_t avail = n - 8;
    if ((uint64_t)hsize < (uint64_t)avail) avail = (Py_ssize_t)hsize;
    if (avail < 6) {
        fail("truncated file header");
        goto out;
    }
    int ntracks = (int16_t)(((unsigned)data[10] << 8) | data[11]);
    int resolution = (int16_t)(((unsigned)data[12] << 8) | data[13]);
    Py_ssize_t pos = 8 + avail;
    if (ntracks <= 0) {
        fail("no tracks");
        goto out;
    }
    for (int t = 0; t < ntracks; t++)
        if (parse_track(s, data, n, &pos, t)) goto out;
    if (resolution == 0) {
        fail("resolution of 0 ticks per quarter");
        goto out;
    }
    result = build_result(s, resolution);
out:
    if (s != NULL) {
        /* keep the buffers for the next file unless this one made them large */
        if (s->notes.cap > (1u << 16)) vec_free(&s->notes);
        if (s->tempos.cap > 1024) vec_free(&s->tempos);
        if (s->tss.cap > 1024) vec_free(&s->tss);
        if (s->kss.cap > 1024) vec_free(&s->kss);
        if (s->insts.cap > 1024) vec_free(&s->insts);
        if (s->big_open) {
            reset_open(s);
            for (int i = 0; i < 16 * 128; i++)
                if (s->open[i].cap > 256) vec_free(&s->open[i]);
            s->big_open = 0;
        }
        s->bad_denominators = NULL;
    }
    PyBuffer_Release(&buf);
    PyBuffer_Release(&bad);
    return result;
}

/* ---- converter helpers: window cutting, drum onsets, note columns -------------------- */

/* split_members(notes, split_times) -> one list per piece, or None.
 * The assignment loop of sequences._extract_subsequences over `notes` (already sorted by start
 * time): a note goes to piece i when split_times[i] <= start < split_times[i + 1]; notes before
 * the first split time are skipped and the loop stops at the first note past the last one.
 * Every start and split time must be a float (compared as Python compares floats); else None. */
static PyObject *split_members(PyObject *self, PyObject *args) {
    PyObject *notes, *times;
    if (!PyArg_ParseTuple(args, "OO", &notes, &times)) return NULL;
    if (!all_plain_notes(notes) || !PyList_CheckExact(times)) Py_RETURN_NONE;
    Py_ssize_t nt = PyList_GET_SIZE(times), n = PyList_GET_SIZE(notes);
    if (nt < 2) Py_RETURN_NONE;
    for (Py_ssize_t k = 0; k < nt; k++)
        if (!PyFloat_CheckExact(PyList_GET_ITEM(times, k))) Py_RETURN_NONE;
    for (Py_ssize_t i = 0; i < n; i++)
        if (!PyFloat_CheckExact(note_slot(PyList_GET_ITEM(notes, i), NOTE_START))) Py_RETURN_NONE;
    Py_ssize_t n_parts = nt - 1;
    PyObject *parts = PyList_New(n_parts);
    if (parts == NULL) return NULL;
    for (Py_ssize_t k = 0; k < n_parts; k++) {
        PyObject *l = PyList_New(0);
        if (l == NULL) {
            Py_DECREF(parts);
            return NULL;
        }
        PyList_SET_ITEM(parts, k, l);
    }
    Py_ssize_t index = -1;
    double first = PyFloat_AS_DOUBLE(PyList_GET_ITEM(times, 0));
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *note = PyList_GET_ITEM(notes, i);
        double t = PyFloat_AS_DOUBLE(note_slot(note, NOTE_START));
        if (t < first) continue;
        while (index < n_parts && t >= PyFloat_AS_DOUBLE(PyList_GET_ITEM(times, index + 1))) {
            index += 1;
            if (index == n_parts) break;
        }
        if (index == n_parts) break;
        /* index >= 0 here: t >= first means the loop above advanced at least once (or t is NaN,
         * which Python would append to members[-1], the last piece) */
        PyObject *target = PyList_GET_ITEM(parts, index < 0 ? n_parts - 1 : index);
        if (PyList_Append(target, note) < 0) {
            Py_DECREF(parts);
            return NULL;
        }
    }
    return parts;
}

/* split_notes(notes, split_times[, copy]) -> [(shifted notes, total time)] per piece, or None.
 * With copy false, each piece's notes are returned as they are (not moved), with the same total.
 * split_members, then shift_notes on each piece, and the piece's total time: the largest
 * shifted end time above 0.0 (0.0 without one), as sequences._extract_subsequences computes. */
static PyObject *split_notes(PyObject *self, PyObject *args) {
    PyObject *notes, *times;
    int copy = 1;
    if (!PyArg_ParseTuple(args, "OO|p", &notes, &times, &copy)) return NULL;
    for (Py_ssize_t i = 0; PyList_CheckExact(notes) && i < PyList_GET_SIZE(notes); i++)
        if (Py_TYPE(PyList_GET_ITEM(notes, i)) == note_type &&
            note_slot(PyList_GET_ITEM(notes, i), NOTE_END) != NULL &&
            !PyFloat_CheckExact(note_slot(PyList_GET_ITEM(notes, i), NOTE_END)))
            Py_RETURN_NONE;
    PyObject *pair = PyTuple_Pack(2, notes, times);
    if (pair == NULL) return NULL;
    PyObject *members = split_members(self, pair);
    Py_DECREF(pair);
    if (members == NULL || members == Py_None) return members;
    Py_ssize_t n_parts = PyList_GET_SIZE(members);
    PyObject *out = PyList_New(n_parts);
    if (out == NULL) goto error;
    for (Py_ssize_t k = 0; k < n_parts; k++) {
        PyObject *part = PyList_GET_ITEM(members, k);
        Py_ssize_t n = PyList_GET_SIZE(part);
        double offset = PyFloat_AS_DOUBLE(PyList_GET_ITEM(times, k));
        double limit = PyFloat_AS_DOUBLE(PyList_GET_ITEM(times, k + 1));
        double total = 0.0;
        if (!copy) { /* the piece's own notes, unshifted, and the total their shifted ends give */
            for (Py_ssize_t i = 0; i < n; i++) {
                double end = PyFloat_AS_DOUBLE(note_slot(PyList_GET_ITEM(part, i), NOTE_END));
                end = (limit < end ? limit : end) - offset;
                if (end > total) total = end;
            }
            PyObject *item = Py_BuildValue("(Od)", part, total);
            if (item == NULL) goto error;
            PyList_SET_ITEM(out, k, item);
            continue;
        }
        PyObject *shifted = PyList_New(n);
        if (shifted == NULL) goto error;
        PyObject *item = Py_BuildValue("(Nd)", shifted, 0.0);
        if (item == NULL) goto error;
        PyList_SET_ITEM(out, k, item);
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject *note = PyList_GET_ITEM(part, i);
            double start = PyFloat_AS_DOUBLE(note_slot(note, NOTE_START));
            double end = PyFloat_AS_DOUBLE(note_slot(note, NOTE_END));
            end = (limit < end ? limit : end) - offset; /* min(end, limit) - offset */
            if (end > total) total = end;
            PyObject *copy = clone_note(note);
            if (copy == NULL) goto error;
            PyList_SET_ITEM(shifted, i, copy);
            PyObject *sv = PyFloat_FromDouble(start - offset), *ev = PyFloat_FromDouble(end);
            if (sv == NULL || ev == NULL) {
                Py_XDECREF(sv);
                Py_XDECREF(ev);
                goto error;
            }
            set_slot(copy, NOTE_START, sv);
            set_slot(copy, NOTE_END, ev);
        }
        PyObject *tot = PyFloat_FromDouble(total);
        if (tot == NULL) goto error;
        PyObject *old = PyTuple_GET_ITEM(item, 1);
        PyTuple_SET_ITEM(item, 1, tot);
        Py_DECREF(old);
    }
    Py_DECREF(members);
    return out;
error:
    Py_DECREF(members);
    Py_XDECREF(out);
    return NULL;
}

/* melody_order(notes) -> the notes stably sorted by (quantized start, -pitch), or None when a
 * start or pitch is not an int of moderate size. */
typedef struct {
    long long start, pitch;
    Py_ssize_t index;
} Ord;

static int ord_cmp(const void *a, const void *b) {
    const Ord *x = a, *y = b;
    if (x->start != y->start) return x->start < y->start ? -1 : 1;
    if (x->pitch != y->pitch) return x->pitch > y->pitch ? -1 : 1;
    return x->index < y->index ? -1 : (x->index > y->index);
}

static PyObject *melody_order(PyObject *self, PyObject *args) {
    PyObject *notes;
    if (!PyArg_ParseTuple(args, "O", &notes)) return NULL;
    if (!all_plain_notes(notes)) Py_RETURN_NONE;
    Py_ssize_t n = PyList_GET_SIZE(notes);
    const long long lim = 1LL << 60;
    Ord *ord = PyMem_Malloc((size_t)(n ? n : 1) * sizeof(Ord));
    if (ord == NULL) return PyErr_NoMemory();
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *note = PyList_GET_ITEM(notes, i);
        if (!small_int(note_slot(note, NOTE_QSTART), -lim, lim, &ord[i].start) ||
            !small_int(note_slot(note, NOTE_PITCH), -lim, lim, &ord[i].pitch)) {
            PyMem_Free(ord);
            Py_RETURN_NONE;
        }
        ord[i].index = i;
    }
    qsort(ord, (size_t)n, sizeof(Ord), ord_cmp);
    PyObject *out = PyList_New(n);
    if (out != NULL)
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject *note = PyList_GET_ITEM(notes, ord[i].index);
            Py_INCREF(note);
            PyList_SET_ITEM(out, i, note);
        }
    PyMem_Free(ord);
    return out;
}

/* Cached 1-tuples (e,) for melody events -2..127: a window is a tuple of these, exactly the
 * values Magenta's tuple(zip(events)) builds (equal and equally hashed, so the dedupe set
 * orders them identically). */
#define EV_MIN (-2)
#define EV_MAX 127
static PyObject *one_tuples[EV_MAX - EV_MIN + 1];

static int init_one_tuples(void) {
    if (one_tuples[0] != NULL) return 0;
    for (int e = EV_MIN; e <= EV_MAX; e++) {
        PyObject *v = PyLong_FromLong(e);
        if (v == NULL) return -1;
        PyObject *t = PyTuple_Pack(1, v);
        Py_DECREF(v);
        if (t == NULL) return -1;
        one_tuples[e - EV_MIN] = t;
    }
    return 0;
}

/* melody_windows(event_lists, slice_steps, hop) -> list(set(windows)) or None.
 * For each event list (in order) and each i in range(slice_steps, len + 1, hop), the window
 * events[i - slice_steps:i] with every event before its first note-on (>= 0) made NO_EVENT,
 * as a tuple of 1-tuples; all windows go into one set in that order, and the set's iteration
 * order is returned. None when an event is not an int in -2..127. */
static PyObject *melody_windows(PyObject *self, PyObject *args) {
    PyObject *lists;
    Py_ssize_t width, hop;
    if (!PyArg_ParseTuple(args, "Onn", &lists, &width, &hop)) return NULL;
    if (!PyList_CheckExact(lists) || width <= 0 || hop <= 0) Py_RETURN_NONE;
    if (init_one_tuples() < 0) return NULL;
    Py_ssize_t nl = PyList_GET_SIZE(lists);
    for (Py_ssize_t k = 0; k < nl; k++) {
        PyObject *ev = PyList_GET_ITEM(lists, k);
        if (!PyList_CheckExact(ev)) Py_RETURN_NONE;
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(ev); i++) {
            long long v;
            if (!small_int(PyList_GET_ITEM(ev, i), EV_MIN, EV_MAX, &v)) Py_RETURN_NONE;
        }
    }
    PyObject *set = PySet_New(NULL);
    if (set == NULL) return NULL;
    PyObject *no_event = one_tuples[MEL_NO_EVENT - EV_MIN];
    for (Py_ssize_t k = 0; k < nl; k++) {
        PyObject *ev = PyList_GET_ITEM(lists, k);
        Py_ssize_t len = PyList_GET_SIZE(ev);
        for (Py_ssize_t end = width; end <= len; end += hop) {
            PyObject *w = PyTuple_New(width);
            if (w == NULL) goto error;
            int leading = 1;
            for (Py_ssize_t j = 0; j < width; j++) {
                long v = PyLong_AsLong(PyList_GET_ITEM(ev, end - width + j));
                PyObject *t;
                if (leading && v < 0) {
                    t = no_event;
                } else {
                    leading = 0;
                    t = one_tuples[v - EV_MIN];
                }
                Py_INCREF(t);
                PyTuple_SET_ITEM(w, j, t);
            }
            int rc = PySet_Add(set, w);
            Py_DECREF(w);
            if (rc < 0) goto error;
        }
    }
    PyObject *out = PySequence_List(set);
    Py_DECREF(set);
    return out;
error:
    Py_DECREF(set);
    return NULL;
}

/* melody_codes(windows, min_pitch) -> bytes of int64 class indices (window by window), or None.
 * Each window is a tuple of 1-tuples (e,) of the same length; the class of e is
 * e - min_pitch + 2 for a note-on and e + 2 for NOTE_OFF / NO_EVENT. None when the windows
 * differ in length or hold anything else. */
static PyObject *melody_codes(PyObject *self, PyObject *args) {
    PyObject *windows;
    long long min_pitch;
    if (!PyArg_ParseTuple(args, "OL", &windows, &min_pitch)) return NULL;
    if (!PyList_CheckExact(windows)) Py_RETURN_NONE;
    Py_ssize_t nw = PyList_GET_SIZE(windows), width = -1;
    for (Py_ssize_t k = 0; k < nw; k++) {
        PyObject *w = PyList_GET_ITEM(windows, k);
        if (!PyTuple_CheckExact(w)) Py_RETURN_NONE;
        if (width < 0) width = PyTuple_GET_SIZE(w);
        if (PyTuple_GET_SIZE(w) != width) Py_RETURN_NONE;
        for (Py_ssize_t j = 0; j < width; j++) {
            PyObject *t = PyTuple_GET_ITEM(w, j);
            long long v;
            if (!PyTuple_CheckExact(t) || PyTuple_GET_SIZE(t) != 1) Py_RETURN_NONE;
            if (!small_int(PyTuple_GET_ITEM(t, 0), EV_MIN, EV_MAX, &v)) Py_RETURN_NONE;
        }
    }
    if (width < 0) width = 0;
    PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(nw * width * sizeof(int64_t)));
    if (out == NULL) return NULL;
    int64_t *codes = (int64_t *)PyBytes_AS_STRING(out);
    for (Py_ssize_t k = 0; k < nw; k++) {
        PyObject *w = PyList_GET_ITEM(windows, k);
        for (Py_ssize_t j = 0; j < width; j++) {
            long v = PyLong_AsLong(PyTuple_GET_ITEM(PyTuple_GET_ITEM(w, j), 0));
            codes[k * width + j] = v >= 0 ? v - min_pitch + 2 : v + 2;
        }
    }
    return out;
}

/* drum_onsets(notes, class_map, steps_per_second[, offset, limit]) -> (steps, class_sets, max_end)
 * or None. An offset moves the note times first, as quantize_notes does.
 * The drum hits of DrumsConverter: notes with is_drum whose pitch is a key of `class_map`,
 * mapped to its value, and with a non-zero velocity, grouped by start step (ascending); each
 * group is frozenset(classes in note order). With steps_per_second > 0 the steps are computed
 * from the note times exactly as quantize_notes does (max_end is its max end step, None without
 * notes) and the notes need not be quantised; with steps_per_second <= 0 the quantized steps
 * of the notes are used and max_end is None. None for unusual notes and for negative steps (the
 * Python path then raises quantize's error). */
typedef struct {
    long long step;
    Py_ssize_t index;
    PyObject *cls; /* borrowed from class_map */
} Hit;

static int hit_cmp(const void *a, const void *b) {
    const Hit *x = a, *y = b;
    if (x->step != y->step) return x->step < y->step ? -1 : 1;
    return x->index < y->index ? -1 : (x->index > y->index);
}

static PyObject *drum_onsets(PyObject *self, PyObject *args) {
    PyObject *notes, *class_map, *offset_obj = Py_None;
    double sps, limit = 0.0;
    if (!PyArg_ParseTuple(args, "OO!d|Od", &notes, &PyDict_Type, &class_map, &sps, &offset_obj, &limit)) return NULL;
    if (!all_plain_notes(notes)) Py_RETURN_NONE;
    int shift = offset_obj != Py_None; /* as quantize_notes: a piece cut at [offset, limit) */
    if (shift && !PyFloat_CheckExact(offset_obj)) Py_RETURN_NONE;
    double offset = shift ? PyFloat_AS_DOUBLE(offset_obj) : 0.0;
    Py_ssize_t n = PyList_GET_SIZE(notes);
    int timed = sps > 0;
    long long max_end = LLONG_MIN;
    const long long lim = 1LL << 52;
    Hit *hits = PyMem_Malloc((size_t)(n ? n : 1) * sizeof(Hit));
    if (hits == NULL) return PyErr_NoMemory();
    Py_ssize_t nh = 0;
    PyObject *result = NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *note = PyList_GET_ITEM(notes, i);
        long long start;
        if (timed) {
            PyObject *s = note_slot(note, NOTE_START), *e = note_slot(note, NOTE_END);
            if (!PyFloat_CheckExact(s) || !PyFloat_CheckExact(e)) goto fallback;
            double sv = PyFloat_AS_DOUBLE(s), ev = PyFloat_AS_DOUBLE(e);
            if (shift) {
                sv = sv - offset;
                ev = (limit < ev ? limit : ev) - offset;
            }
            double qs = sv * sps + 0.5, qe = ev * sps + 0.5;
            if (!(qs >= 0 && qs < 4e15 && qe >= 0 && qe < 4e15)) goto fallback;
            start = (long long)qs;
            long long end = (long long)qe;
            if (end == start) end += 1;
            if (end > max_end) max_end = end;
        }
        PyObject *drum = note_slot(note, NOTE_IS_DRUM);
        if (drum != Py_True && drum != Py_False) goto fallback;
        if (drum == Py_False) continue;
        PyObject *cls = PyDict_GetItemWithError(class_map, note_slot(note, NOTE_PITCH));
        if (cls == NULL) {
            if (PyErr_Occurred()) goto done;
            continue;
        }
        long long velocity;
        if (!small_int(note_slot(note, NOTE_VELOCITY), LLONG_MIN, LLONG_MAX, &velocity)) goto fallback;
        if (velocity == 0) continue;
        if (!timed && !small_int(note_slot(note, NOTE_QSTART), -lim, lim, &start)) goto fallback;
        hits[nh].step = start;
        hits[nh].index = i;
        hits[nh].cls = cls;
        nh++;
    }
    qsort(hits, (size_t)nh, sizeof(Hit), hit_cmp);
    PyObject *steps = PyList_New(0), *sets = PyList_New(0), *group = NULL;
    if (steps == NULL || sets == NULL) goto build_error;
    for (Py_ssize_t a = 0; a < nh;) {
        Py_ssize_t b = a;
        while (b < nh && hits[b].step == hits[a].step) b++;
        group = PyList_New(b - a);
        if (group == NULL) goto build_error;
        for (Py_ssize_t k = a; k < b; k++) {
            Py_INCREF(hits[k].cls);
            PyList_SET_ITEM(group, k - a, hits[k].cls);
        }
        PyObject *fs = PyFrozenSet_New(group);
        Py_CLEAR(group);
        if (fs == NULL) goto build_error;
        PyObject *st = PyLong_FromLongLong(hits[a].step);
        if (st == NULL || PyList_Append(sets, fs) < 0 || PyList_Append(steps, st) < 0) {
            Py_XDECREF(st);
            Py_DECREF(fs);
            goto build_error;
        }
        Py_DECREF(st);
        Py_DECREF(fs);
        a = b;
    }
    if (timed && n > 0)
        result = Py_BuildValue("(NNL)", steps, sets, max_end);
    else
        result = Py_BuildValue("(NNO)", steps, sets, Py_None);
    goto done;
build_error:
    Py_XDECREF(steps);
    Py_XDECREF(sets);
    Py_XDECREF(group);
    goto done;
fallback:
    result = Py_None;
    Py_INCREF(result);
done:
    PyMem_Free(hits);
    return result;
}

/* note_columns(notes) -> (instrument, program, is_drum, quantized_start, quantized_end) as
 * bytes of int64, or None when a field is not a plain int (is_drum: a bool). */
static PyObject *note_columns(PyObject *self, PyObject *args) {
    PyObject *notes;
    if (!PyArg_ParseTuple(args, "O", &notes)) return NULL;
    if (!all_plain_notes(notes)) Py_RETURN_NONE;
    Py_ssize_t n = PyList_GET_SIZE(notes);
    static const int fields[5] = {4, 5, NOTE_IS_DRUM, NOTE_QSTART, NOTE_QEND};
    PyObject *cols[5] = {NULL, NULL, NULL, NULL, NULL};
    for (int f = 0; f < 5; f++) {
        cols[f] = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(n * sizeof(int64_t)));
        if (cols[f] == NULL) goto error;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *note = PyList_GET_ITEM(notes, i);
        for (int f = 0; f < 5; f++) {
            PyObject *v = note_slot(note, fields[f]);
            long long x;
            if (fields[f] == NOTE_IS_DRUM) {
                if (v != Py_True && v != Py_False) goto fallback;
                x = v == Py_True;
            } else if (!small_int(v, -(1LL << 62), 1LL << 62, &x)) {
                goto fallback;
            }
            ((int64_t *)PyBytes_AS_STRING(cols[f]))[i] = x;
        }
    }
    return Py_BuildValue("(NNNNN)", cols[0], cols[1], cols[2], cols[3], cols[4]);
fallback:
    for (int f = 0; f < 5; f++) Py_XDECREF(cols[f]);
    Py_RETURN_NONE;
error:
    for (int f = 0; f < 5; f++) Py_XDECREF(cols[f]);
    return NULL;
}

/* filter_notes(notes, lo, hi, programs) -> the notes with lo <= pitch <= hi (and, unless
 * programs is None, program in programs), in order; None for unusual notes or bounds. */
static PyObject *filter_notes(PyObject *self, PyObject *args) {
    PyObject *notes, *programs;
    long long lo, hi;
    if (!PyArg_ParseTuple(args, "OLLO", &notes, &lo, &hi, &programs)) return NULL;
    if (!all_plain_notes(notes)) Py_RETURN_NONE;
    if (programs != Py_None && !PyAnySet_CheckExact(programs)) Py_RETURN_NONE;
    Py_ssize_t n = PyList_GET_SIZE(notes);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *note = PyList_GET_ITEM(notes, i);
        long long v;
        if (!small_int(note_slot(note, NOTE_PITCH), LLONG_MIN, LLONG_MAX, &v)) Py_RETURN_NONE;
        if (programs != Py_None && !small_int(note_slot(note, 5), LLONG_MIN, LLONG_MAX, &v)) Py_RETURN_NONE;
    }
    PyObject *out = PyList_New(0);
    if (out == NULL) return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *note = PyList_GET_ITEM(notes, i);
        if (programs != Py_None) {
            int in = PySet_Contains(programs, note_slot(note, 5));
            if (in < 0) goto error;
            if (!in) continue;
        }
        long long pitch = PyLong_AsLongLong(note_slot(note, NOTE_PITCH));
        if (lo <= pitch && pitch <= hi && PyList_Append(out, note) < 0) goto error;
    }
    return out;
error:
    Py_DECREF(out);
    return NULL;
}

static PyMethodDef methods[] = {
    {"parse", parse, METH_VARARGS,
     "parse(data, bad_denominators) -> (resolution, tempos, time_signatures, notes, total_time)"},
    {"set_note_type", set_note_type, METH_O,
     "set_note_type(cls) -> bool: the class parse() builds notes with (True when slots are filled directly)"},
    {"quantize_notes", quantize_notes, METH_VARARGS,
     "quantize_notes(notes, steps_per_second[, offset, limit]) -> (quantized copies, max end step) or None"},
    {"shift_notes", shift_notes, METH_VARARGS,
     "shift_notes(notes, offset, limit) -> copies moved by -offset, ends clipped at limit, or None"},
    {"melody_events", melody_events, METH_VARARGS,
     "melody_events(notes, begin, start_step, gap_steps) -> melody events of notes[begin:], or None"},
    {"filter_notes", filter_notes, METH_VARARGS,
     "filter_notes(notes, lo, hi, programs) -> notes with lo <= pitch <= hi and program in programs, or None"},
    {"split_notes", split_notes, METH_VARARGS,
     "split_notes(notes, split_times[, copy]) -> [(shifted notes, total time)] per piece (start-sorted input), or None"},
    {"melody_order", melody_order, METH_VARARGS,
     "melody_order(notes) -> notes stably sorted by (quantized start, -pitch), or None"},
    {"split_members", split_members, METH_VARARGS,
     "split_members(notes, split_times) -> the notes of each piece (start-sorted input), or None"},
    {"melody_windows", melody_windows, METH_VARARGS,
     "melody_windows(event_lists, slice_steps, hop) -> list(set(windows as tuples of 1-tuples)), or None"},
    {"melody_codes", melody_codes, METH_VARARGS,
     "melody_codes(windows, min_pitch) -> bytes of int64 class indices, or None"},
    {"drum_onsets", drum_onsets, METH_VARARGS,
     "drum_onsets(notes, class_map, steps_per_second[, offset, limit]) -> (steps, class sets, max end step), or None"},
    {"note_columns", note_columns, METH_VARARGS,
     "note_columns(notes) -> (instrument, program, is_drum, quantized start, quantized end) int64 bytes, or None"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_smf", "Fast Standard MIDI File reader.", -1, methods};

PyMODINIT_FUNC PyInit__smf(void) {
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    SmfError = PyErr_NewException("musicvae.data._smf.SmfError", PyExc_ValueError, NULL);
    if (SmfError == NULL || PyModule_AddObjectRef(m, "SmfError", SmfError) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
