/*
 * The floor for eager autodiff driven from Python: the least a C extension can do per op.
 *
 * One Python object per op (its value, gradient, op code and up to two children, held by
 * reference), made by the number protocol or a method call, and a backward pass that orders the
 * graph depth first and sweeps it once. Nothing else: no arena, no checks beyond the ones that
 * keep the interpreter safe, no pictures, no thread safety. Built by benchmarks/floor.py for the
 * benchmark only; never installed with gradrs.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdlib.h>

enum { LEAF, ADD, MUL, MUL_C, POW_C, TANH, RELU, EXP };

typedef struct Node {
    PyObject_HEAD
    double data;
    double grad;
    double c; /* the constant of MUL_C and POW_C */
    int op;
    unsigned mark; /* the backward pass that last reached this node */
    struct Node *a, *b;
} Node;

static PyTypeObject NodeType;
static unsigned passes = 0;

static Node *make(int op, double data, Node *a, Node *b, double c) {
    Node *n = PyObject_New(Node, &NodeType);
    if (n == NULL) return NULL;
    n->data = data;
    n->grad = 0.0;
    n->c = c;
    n->op = op;
    n->mark = 0;
    Py_XINCREF(a);
    Py_XINCREF(b);
    n->a = a;
    n->b = b;
    return n;
}

static void node_dealloc(Node *n) {
    Py_XDECREF(n->a);
    Py_XDECREF(n->b);
    PyObject_Free(n);
}

static PyObject *node_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    double data;
    if (!PyArg_ParseTuple(args, "d", &data)) return NULL;
    return (PyObject *)make(LEAF, data, NULL, NULL, 0.0);
}

static int is_node(PyObject *o) { return Py_TYPE(o) == &NodeType; }

static PyObject *node_add(PyObject *x, PyObject *y) {
    if (!is_node(x) || !is_node(y)) Py_RETURN_NOTIMPLEMENTED;
    Node *a = (Node *)x, *b = (Node *)y;
    return (PyObject *)make(ADD, a->data + b->data, a, b, 0.0);
}

static PyObject *node_mul(PyObject *x, PyObject *y) {
    if (is_node(x) && is_node(y)) {
        Node *a = (Node *)x, *b = (Node *)y;
        return (PyObject *)make(MUL, a->data * b->data, a, b, 0.0);
    }
    PyObject *node = is_node(x) ? x : y, *other = is_node(x) ? y : x;
    double c = PyFloat_AsDouble(other);
    if (c == -1.0 && PyErr_Occurred()) {
        PyErr_Clear();
        Py_RETURN_NOTIMPLEMENTED;
    }
    Node *a = (Node *)node;
    return (PyObject *)make(MUL_C, a->data * c, a, NULL, c);
}

static PyObject *node_pow(PyObject *x, PyObject *y, PyObject *mod) {
    if (!is_node(x) || mod != Py_None) Py_RETURN_NOTIMPLEMENTED;
    double e = PyFloat_AsDouble(y);
    if (e == -1.0 && PyErr_Occurred()) return NULL;
    Node *a = (Node *)x;
    double out = e == 2.0 ? a->data * a->data : pow(a->data, e);
    return (PyObject *)make(POW_C, out, a, NULL, e);
}

static PyObject *node_tanh(Node *self, PyObject *unused) {
    return (PyObject *)make(TANH, tanh(self->data), self, NULL, 0.0);
}

static PyObject *node_relu(Node *self, PyObject *unused) {
    return (PyObject *)make(RELU, self->data > 0.0 ? self->data : 0.0, self, NULL, 0.0);
}

static PyObject *node_exp(Node *self, PyObject *unused) {
    return (PyObject *)make(EXP, exp(self->data), self, NULL, 0.0);
}

/* Orders the graph under `root` children first (an iterative depth-first walk), then sweeps it
 * from the root down. Interior gradients start at 0 each pass; leaves accumulate. */
static PyObject *node_backward(Node *root, PyObject *unused) {
    unsigned pass = ++passes;
    Py_ssize_t cap = 1024, len = 0, top = 0;
    Node **order = malloc(cap * sizeof(Node *));
    Node **stack = malloc(cap * sizeof(Node *));
    unsigned char *state = malloc(cap);
    Py_ssize_t stack_cap = cap;
    if (!order || !stack || !state) goto nomem;
    root->mark = pass;
    stack[top] = root;
    state[top++] = 0;
    while (top > 0) {
        Node *n = stack[top - 1];
        Node *next = NULL;
        if (state[top - 1] == 0) {
            state[top - 1] = 1;
            next = n->a;
        } else if (state[top - 1] == 1) {
            state[top - 1] = 2;
            next = n->b;
        } else {
            top--;
            if (len == cap) {
                cap *= 2;
                Node **grown = realloc(order, cap * sizeof(Node *));
                if (!grown) goto nomem;
                order = grown;
            }
            order[len++] = n;
            continue;
        }
        if (next != NULL && next->mark != pass) {
            next->mark = pass;
            if (top == stack_cap) {
                stack_cap *= 2;
                Node **grown = realloc(stack, stack_cap * sizeof(Node *));
                unsigned char *grown_state = realloc(state, stack_cap);
                if (grown) stack = grown;
                if (grown_state) state = grown_state;
                if (!grown || !grown_state) goto nomem;
            }
            stack[top] = next;
            state[top++] = 0;
        }
    }
    for (Py_ssize_t i = 0; i < len; i++)
        if (order[i]->op != LEAF) order[i]->grad = 0.0;
    root->grad = 1.0;
    for (Py_ssize_t i = len - 1; i >= 0; i--) {
        Node *n = order[i];
        double g = n->grad;
        switch (n->op) {
        case ADD: n->a->grad += g; n->b->grad += g; break;
        case MUL: n->a->grad += n->b->data * g; n->b->grad += n->a->data * g; break;
        case MUL_C: n->a->grad += n->c * g; break;
        case POW_C: n->a->grad += (n->c == 2.0 ? 2.0 * n->a->data : n->c * pow(n->a->data, n->c - 1.0)) * g; break;
        case TANH: n->a->grad += (1.0 - n->data * n->data) * g; break;
        case RELU: n->a->grad += (n->data > 0.0 ? 1.0 : 0.0) * g; break;
        case EXP: n->a->grad += n->data * g; break;
        default: break;
        }
    }
    free(order);
    free(stack);
    free(state);
    Py_RETURN_NONE;
nomem:
    free(order);
    free(stack);
    free(state);
    return PyErr_NoMemory();
}

static PyObject *get_data(Node *self, void *closure) { return PyFloat_FromDouble(self->data); }
static PyObject *get_grad(Node *self, void *closure) { return PyFloat_FromDouble(self->grad); }

static PyGetSetDef node_getset[] = {
    {"data", (getter)get_data, NULL, NULL, NULL},
    {"grad", (getter)get_grad, NULL, NULL, NULL},
    {NULL},
};

static PyMethodDef node_methods[] = {
    {"tanh", (PyCFunction)node_tanh, METH_NOARGS, NULL},
    {"relu", (PyCFunction)node_relu, METH_NOARGS, NULL},
    {"exp", (PyCFunction)node_exp, METH_NOARGS, NULL},
    {"backward", (PyCFunction)node_backward, METH_NOARGS, NULL},
    {NULL},
};

static PyNumberMethods node_number = {
    .nb_add = node_add,
    .nb_multiply = node_mul,
    .nb_power = node_pow,
};

static PyTypeObject NodeType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "_floor.Value",
    .tp_basicsize = sizeof(Node),
    .tp_dealloc = (destructor)node_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = node_new,
    .tp_methods = node_methods,
    .tp_getset = node_getset,
    .tp_as_number = &node_number,
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_floor", NULL, -1, NULL};

PyMODINIT_FUNC PyInit__floor(void) {
    if (PyType_Ready(&NodeType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    Py_INCREF(&NodeType);
    if (PyModule_AddObject(m, "Value", (PyObject *)&NodeType) < 0) {
        Py_DECREF(&NodeType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
