# %% [markdown]
# # Lesson 1: automatic differentiation, from the graph to the gradient
#
# A neural network is trained by gradient descent, and the gradient is computed by **reverse-mode automatic
# differentiation** (backpropagation). In this lesson we build a small computation with `minidni`, look at the graph
# it records, watch the backward pass walk that graph from the loss down to the parameters, and check every number it
# produces: against the chain rule worked out by hand, and against finite differences.
#
# The last section connects this to the paper. Jaderberg et al. 2016 (*Decoupled Neural Interfaces using Synthetic
# Gradients*, Sec. 1) call it **update locking**: a layer cannot be updated until the layers above it have run, and
# its gradient exists only once the backward walk you are about to see has come down from the loss. A synthetic
# gradient replaces that walk.
#
# Run it as a script (`python lessons/01_autodiff_from_scratch.py`) or as a notebook (`python lessons/make_notebooks.py`
# writes one per lesson; docs/lessons.md).

# %%
import numpy as np

import minidni as md
from minidni.lesson import heading

np.set_printoptions(precision=5, suppress=True)
heading("Lesson 1: automatic differentiation, from the graph to the gradient", level=1)

# %% [markdown]
# ## 1. One neuron and its loss
#
# $$L = (\tanh(w x + b) - t)^2$$
#
# `x` (input) and `t` (target) are data: plain tensors. `w` and `b` are what we want gradients for, so they are
# created with `requires_grad=True`. We write the forward pass one operation per line and name each result, so the
# graph below is readable. Python numbers become float32 scalars (shape `()`).

# %%
heading("1. One neuron and its loss")


def named(tensor, name):
    """Give a tensor a name for printing (it changes nothing else)."""
    tensor.name = name
    return tensor


x = md.Tensor(0.5, name="x")
t = md.Tensor(0.2, name="t")
w = md.Tensor(-1.5, requires_grad=True, name="w")
b = md.Tensor(0.3, requires_grad=True, name="b")


def neuron_loss():
    """The forward pass: each line is one op, one node of the graph."""
    wx = named(w * x, "wx")
    z = named(wx + b, "z")
    h = named(z.tanh(), "h")
    d = named(h - t, "d")
    return named(d * d, "L")  # d is used twice: keep that in mind for section 4


L = neuron_loss()
print("L =", L)

# %% [markdown]
# ## 2. The graph
#
# Every op result remembers how it was made: `L._ctx` is a *context* holding the op (`L.op` is its name) and its
# input tensors `L._ctx.inputs`. Following `inputs` from the loss visits the whole computation: that chain of
# contexts **is** the graph. A *leaf* (`_ctx is None`) is a tensor you created: a parameter or data.
#
# `print_graph` walks it with an explicit stack (depth first, like the engine's own walk; recursion would hit
# Python's limit on a graph thousands of ops deep) and prints each node indented under the node that uses it.

# %%
heading("2. The graph")


def describe(node):
    if node.op:
        return f"op {node.op}"
    return "leaf, requires_grad" if node.requires_grad else "leaf, constant"


def print_graph(root):
    """Print every node reachable from `root`: name, how it was made, shape. A node reached twice is printed twice,
    but its inputs only once."""
    seen = set()
    stack = [(root, 0)]
    while stack:
        node, depth = stack.pop()
        again = id(node) in seen
        note = "   (again: inputs shown above)" if again and node._ctx is not None else ""
        print(f"{'    ' * depth}{node.name or '?'}  [{describe(node)}]  shape {node.shape}{note}")
        if again:
            continue
        seen.add(id(node))
        if node._ctx is not None:
            for inp in reversed(node._ctx.inputs):  # reversed: the first input is printed first
                stack.append((inp, depth + 1))


print_graph(L)

# %% [markdown]
# Read from the deepest indentation up to `L`, and it is the forward pass. `d` appears twice under `L`: the graph is
# a DAG (a node may have several users), not a tree.
#
# ## 3. The backward pass, step by step
#
# `L.backward()` starts with $\partial L / \partial L = 1$ and visits the nodes in reverse topological order: a node
# is visited only after every node that uses it, so the gradient arriving at it is complete. At each node it calls
# the op's `backward(ctx, grad_output)`, which returns one gradient per input (the local chain rule), and passes
# those down. Leaves store what arrives in `.grad`.
#
# `backward(trace=f)` calls `f(node, grad)` at each visit, so we can print the walk. Constants (`x`, `t`) are not
# visited: nothing asked for their gradient.

# %%
heading("3. The backward pass, step by step")


def trace_printer(root):
    """A trace callback for a scalar graph: prints d root / d node as the walk reaches each node."""
    def print_step(node, grad):
        derivative = f"d{root.name}/d{node.name}"
        print(f"  {node.name:>3}  {describe(node):22s} shape {node.shape}   {derivative} = {grad.item():+.6f}")
    return print_step


L.backward(trace=trace_printer(L))
print(f"w.grad = {w.grad.item():+.6f}   b.grad = {b.grad.item():+.6f}")

# %% [markdown]
# ## 4. The same numbers by hand: the chain rule
#
# With $z = wx + b$, $h = \tanh z$, $d = h - t$, $L = d^2$:
#
# $$\frac{\partial L}{\partial d} = 2d, \quad \frac{\partial L}{\partial h} = 2d \cdot 1, \quad
# \frac{\partial L}{\partial z} = 2d\,(1 - h^2), \quad \frac{\partial L}{\partial w} = 2d\,(1 - h^2)\,x, \quad
# \frac{\partial L}{\partial b} = 2d\,(1 - h^2)$$
#
# Each factor is one op's local derivative; backward multiplies them from the top down. We compute them in float64
# and compare with the engine's float32 results.

# %%
heading("4. The same numbers by hand: the chain rule")
xv, tv, wv, bv = 0.5, 0.2, -1.5, 0.3
hv = np.tanh(wv * xv + bv)
dv = hv - tv
dL_dz = 2 * dv * (1 - hv**2)
hand = {"w": dL_dz * xv, "b": dL_dz}
print(f"dL/dd = 2d = {2 * dv:+.6f}   (d * d sends g*d to each of its two inputs; both are d, so they add up)")
for prm in (w, b):
    print(f"dL/d{prm.name}: engine {prm.grad.item():+.7f}   by hand {hand[prm.name]:+.7f}")
    assert np.isclose(prm.grad, hand[prm.name], rtol=1e-5)

# %% [markdown]
# ### A node used twice: gradients add up
#
# `L = d * d` uses `d` twice. The multiply's backward returns $g\,d$ for its first input *and* $g\,d$ for its second;
# both are contributions to $\partial L/\partial d$, and the engine **adds** them before visiting `d` (the trace
# above showed `d` once, with the sum $2d$). Had it kept only one, the result would be half the true gradient.
#
# A smaller case: $y = a \cdot a + a$ has $dy/da = 2a + 1$: three uses, three contributions.

# %%
heading("A node used twice: gradients add up", level=3)
a = md.Tensor(3.0, requires_grad=True, name="a")
aa = named(a * a, "aa")
y = named(aa + a, "y")
print_graph(y)
y.backward(trace=trace_printer(y))
print(f"dy/da = {a.grad.item()}  (2a + 1 = {2 * 3.0 + 1})")
assert a.grad == 7.0

# %% [markdown]
# ## 5. A two-layer network
#
# Now with matrices. A batch of N = 4 inputs with 3 features, a hidden layer of 5 ReLU units, 3 classes:
#
#     a1 = x W1 + b1        (4, 5)      x (4, 3), W1 (3, 5), b1 (5,)
#     h1 = relu(a1)         (4, 5)
#     logits = h1 W2 + b2   (4, 3)      W2 (5, 3), b2 (3,)
#     loss = cross_entropy(logits, labels)   ()   mean over the batch of -log softmax(logits)[label]
#
# We use float64 here, so the finite-difference check in section 6 is accurate. The rule of the engine: **every
# gradient has the shape of the tensor it belongs to** (`b1.grad` is (5,), though `b1` was broadcast over 4 rows).

# %%
heading("5. A two-layer network")
rng = np.random.default_rng(0)
X = md.Tensor(rng.normal(size=(4, 3)), name="x")
labels = np.array([0, 2, 1, 2])
W1 = md.Tensor(rng.normal(size=(3, 5)), requires_grad=True, name="W1")
b1 = md.Tensor(rng.normal(size=5) * 0.1, requires_grad=True, name="b1")
W2 = md.Tensor(rng.normal(size=(5, 3)), requires_grad=True, name="W2")
b2 = md.Tensor(rng.normal(size=3) * 0.1, requires_grad=True, name="b2")
params = [W1, b1, W2, b2]


def net_loss(x):
    a1 = named(md.ops.linear(x, W1, b1), "a1")
    h1 = named(a1.relu(), "h1")
    logits = named(md.ops.linear(h1, W2, b2), "logits")
    return named(md.ops.cross_entropy(logits, labels), "loss"), a1, h1


loss, a1, h1 = net_loss(X)
print("loss =", loss.item())
print_graph(loss)

# %% [markdown]
# The backward pass, showing the shape of each arriving gradient and its size:

# %%
arrivals = []


def print_matrix_step(node, grad):
    arrivals.append(node.name)
    print(f"  {node.name:>6}  {describe(node):22s} shape {str(node.shape):7s} grad shape {str(grad.shape):7s} "
          f"|grad| = {np.linalg.norm(grad):.4f}")


loss.backward(trace=print_matrix_step)
for prm in params:
    assert prm.grad.shape == prm.shape

# %% [markdown]
# By hand, with $p = \mathrm{softmax}(\text{logits})$ and $Y$ the one-hot labels (each line is one op's backward):
#
#     d_logits = (p - Y) / N                 (4, 3)
#     dW2 = h1^T d_logits,  db2 = sum_n d_logits       (5, 3), (3,)
#     dh1 = d_logits W2^T                    (4, 5)
#     da1 = dh1 * [a1 > 0]                   (4, 5)     relu passes the gradient where it was active
#     dW1 = x^T da1,        db1 = sum_n da1            (3, 5), (5,)

# %%
logits_v = h1.data @ W2.data + b2.data
probs = np.exp(logits_v - logits_v.max(axis=1, keepdims=True))
probs /= probs.sum(axis=1, keepdims=True)
Y = np.eye(3)[labels]
d_logits = (probs - Y) / 4
dh1 = d_logits @ W2.data.T
da1 = dh1 * (a1.data > 0)
by_hand = {"W2": h1.data.T @ d_logits, "b2": d_logits.sum(0), "W1": X.data.T @ da1, "b1": da1.sum(0)}
for prm in params:
    err = np.abs(prm.grad - by_hand[prm.name]).max()
    print(f"{prm.name}: shape {str(prm.shape):7s} max |engine - hand| = {err:.1e}")
    assert err < 1e-12

# %% [markdown]
# ## 6. Finite differences: checking without trusting any derivation
#
# The definition of the derivative gives an independent check. For each parameter element $\theta_i$,
#
# $$\frac{\partial L}{\partial \theta_i} \approx \frac{L(\theta + \epsilon e_i) - L(\theta - \epsilon e_i)}{2\epsilon}$$
#
# (central differences: error $O(\epsilon^2)$). In float64 with $\epsilon = 10^{-6}$ it agrees with backprop to
# about $10^{-9}$ or better; in float32, rounding would swamp it, which is why the check runs in float64. ReLU has a
# kink at 0, where the two sides disagree, so we first make sure no pre-activation is within $\epsilon$ of it.
#
# The perturbed losses need no graph, so they run under `md.no_grad()` (see section 7).

# %%
heading("6. Finite differences: checking without trusting any derivation")


def loss_value():
    with md.no_grad():
        return net_loss(X)[0].item()


print(f"smallest |a1| = {np.abs(a1.data).min():.3f}  (far from the relu kink compared with eps)")
assert np.abs(a1.data).min() > 1e-3
eps = 1e-6
for prm in params:
    numeric = np.zeros_like(prm.data)
    for i in np.ndindex(prm.shape):
        old = prm.data[i]
        prm.data[i] = old + eps
        up = loss_value()
        prm.data[i] = old - eps
        down = loss_value()
        prm.data[i] = old  # put it back
        numeric[i] = (up - down) / (2 * eps)
    rel = np.abs(numeric - prm.grad).max() / np.abs(prm.grad).max()
    print(f"{prm.name}: {prm.size:2d} elements, max relative difference {rel:.1e}")
    assert rel < 1e-6

# %% [markdown]
# One number checks all parameters at once: for a random direction $v$, the directional derivative
# $\frac{L(\theta + \epsilon v) - L(\theta - \epsilon v)}{2\epsilon}$ must equal $\langle \nabla L, v \rangle$.

# %%
vs = [rng.normal(size=prm.shape) for prm in params]
theta = [prm.data.copy() for prm in params]
for prm, th, v in zip(params, theta, vs):
    prm.data[...] = th + eps * v
up = loss_value()
for prm, th, v in zip(params, theta, vs):
    prm.data[...] = th - eps * v
down = loss_value()
for prm, th in zip(params, theta):
    prm.data[...] = th  # put them back exactly
directional = (up - down) / (2 * eps)
inner = sum(float((prm.grad * v).sum()) for prm, v in zip(params, vs))
print(f"finite difference {directional:.9f}   <grad, v> {inner:.9f}")
assert np.isclose(directional, inner, rtol=1e-6)

# %% [markdown]
# ## 7. Rules: a second backward, `no_grad`, `detach`
#
# **A second backward.** To save memory, `backward()` releases the arrays each op saved for its backward (`h`, `d`,
# the inputs of a multiply, ...). Calling it again on the same graph raises an error instead of silently adding the
# gradients a second time. The error is the point here: we catch it and print it.

# %%
heading("7. Rules: a second backward, `no_grad`, `detach`")
w.grad = b.grad = None
L = neuron_loss()
L.backward()
try:
    L.backward()
    raise AssertionError("a second backward() should have raised")  # not a RuntimeError: it would escape
except RuntimeError as err:
    print("expected: a second backward() over the same graph is refused, with this message:")
    print("    RuntimeError:", err)

# %% [markdown]
# If you do mean to backpropagate twice, say so with `retain_graph=True` on the first call. Gradients then
# **accumulate** in `.grad`: the second call adds to the first. The same happens across training steps, which is why
# a training loop clears gradients (`optimizer.zero_grad()`, or `p.grad = None`) before each backward.

# %%
w.grad = b.grad = None
L = neuron_loss()
L.backward(retain_graph=True)
first = w.grad.copy()
L.backward()
print(f"after one backward w.grad = {first.item():+.6f}, after two = {w.grad.item():+.6f}")
assert np.isclose(w.grad, 2 * first)

# %% [markdown]
# **`no_grad`.** Inside `with md.no_grad():` ops compute values but record nothing: results have
# `requires_grad=False` and no `_ctx`. Use it for evaluation, for finite differences, and for optimizer updates.
#
# **`detach()`** returns the same array cut from the graph: a constant. Gradients stop there.

# %%
with md.no_grad():
    L_eval = neuron_loss()
print(f"under no_grad: L = {L_eval.item():.5f}, requires_grad = {L_eval.requires_grad}, op = {L_eval.op!r}")

h = named((w * x + b).tanh(), "h")
y = named(named(h.detach(), "h.detach()") * w, "y")  # y = h w, with h treated as a constant
print_graph(y)
w.grad = b.grad = None
y.backward()
print(f"dy/dw = {w.grad.item():+.6f} (= h = {h.item():+.6f}: only the direct path)")
print(f"b.grad = {b.grad} (b is behind the cut)")
assert np.isclose(w.grad, h.data) and b.grad is None

# %% [markdown]
# ## 8. Why DNI exists: update locking
#
# Look back at the order of the two-layer network's backward pass:

# %%
heading("8. Why DNI exists: update locking")
print(" -> ".join(arrivals))
for name in ("W2", "W1"):
    print(f"{name} gets its gradient at step {arrivals.index(name) + 1} of {len(arrivals)}")

# %% [markdown]
# `W1` is last. Before layer 1 can be updated, the whole forward pass must finish, the loss must be computed, and the
# backward walk must come down through layer 2. With many layers, or with layers on different machines, every
# layer waits for every layer above it. Jaderberg et al. 2016, Sec. 1, name these waits: **update locking** (no
# module can be updated before the modules that depend on it have run forward) and **backwards locking** (nor
# before they have run backward as well). Backpropagation has both.
#
# We can cut the network in two at an **interface**: the output `h1` of module 1 is the input of module 2. Module 2
# gets a fresh leaf with `h1`'s values (cut like `detach`, but with `requires_grad=True` so it collects the
# gradient that module 2 sends back). `tensor.backward(grad)` with an explicit gradient then continues the walk inside
# module 1. The two halves give exactly the gradient of the one big walk:

# %%
true_dW1 = W1.grad.copy()
for prm in params:
    prm.grad = None

h1 = md.ops.linear(X, W1, b1).relu()  # module 1: forward                      (4, 5)
h1_in = md.Tensor(h1.data, requires_grad=True)  # the interface
loss = md.ops.cross_entropy(md.ops.linear(h1_in, W2, b2), labels)  # module 2 and the loss
loss.backward()  # module 2's backward: fills h1_in.grad = dL/dh1            (4, 5)
true_grad = h1_in.grad
h1.backward(true_grad)  # module 1's backward, started from the interface
print("dL/dh1 at the interface, shape", true_grad.shape)
assert np.allclose(W1.grad, true_dW1, rtol=1e-12)

# %% [markdown]
# Module 1 could run `h1.backward(...)` the moment it has *some* gradient for `h1`; it only has to wait because the
# true one, `dL/dh1`, comes from everything above the interface. A DNI gives module 1 a **synthesizer**: a small
# model $M$ that predicts the gradient from the activation, `synthetic_grad = M(h1)`, available right after module 1's
# forward pass. Module 1 updates with it at once; later, when the true gradient arrives, $M$ is trained to reduce
# $\lVert \hat g - g \rVert^2$ (Sec. 2). Below, a zero "synthesizer" stands in for $M$, to show that nothing above
# the interface is needed:

# %%
for prm in params:
    prm.grad = None
h1 = md.ops.linear(X, W1, b1).relu()
synthetic_grad = np.zeros_like(h1.data)  # M(h1) for an untrained M; later lessons learn it
h1.backward(synthetic_grad)
print(f"W1.grad {W1.grad.shape} filled from the synthetic gradient; W2.grad is {W2.grad}: module 2 never ran")
print("synthesizer loss ||synthetic_grad - true_grad||^2 =", float(((synthetic_grad - true_grad) ** 2).sum()))

# %% [markdown]
# **Summary.** The graph is recorded during the forward pass (`_ctx.inputs`). Backward visits it in reverse
# topological order, multiplying local derivatives (the chain rule) and adding the contributions of a node used more
# than once. Check gradients by hand on small cases and by finite differences in float64. A layer's gradient exists
# only at the end of that walk; a synthetic gradient is a prediction of it, available early.
