"""Graph analysis of a CNN: micro-layers, coupled groups, macro-layers, units, exact cost.

``analyze(model, input_size)`` traces the model with torch.fx (eval mode), propagates
shapes at (1, 3, input_size, input_size) and returns a :class:`ModelGraph`:

- **micro-layers**: every nn.Conv2d / nn.Linear in execution order; a depthwise conv has
  no width of its own, the classifier (last nn.Linear) and ``fixed`` layers a fixed one;
- **groups**: micro-layers whose output widths must be equal (residual adds, depthwise
  convs with their producer, elementwise products, channel shuffles). Concatenation does
  not couple its inputs. An option-A shortcut's zero-padded identity joins the stage's
  residual stream; the pad amount follows (see ``ModelGraph.constraints``);
- **macro-layers**: spans between cut points of the data-flow graph (method.md section 2);
  a span without a free width (a lone depthwise conv) joins the next one, the classifier
  stays outside;
- **units**: macro-layers that must share one scaling factor (a shared group, or ``tie``, or
  a layer reading the widths of non-adjacent units, e.g. a DenseNet transition: the solver's
  chain needs every cost term within two consecutive units);
- **cost**: parameters and MACs as exact polynomials of the group widths (``cost``,
  vectorised ``cost_array``, per macro-layer ``macro_params`` / ``macro_macs``).

How constructs are read (everything else that changes channels fixes the widths involved,
so a width the analysis calls free can always be realised): conv/linear outputs start a
group; BN, activations, pooling, dropout, flatten and spatial indexing pass channels
through; ``cat`` on dim 1 lists its inputs' groups in order; add/sub/mul/... unify them;
``chunk`` (and ``split`` by a computed size) cuts channels into equal, coupled parts;
``view`` + ``transpose`` + ``view`` channel shuffles interleave equal parts (with
``prunable=True``, for plans realised by pruning, they fix the widths they shuffle: the pruner
cannot select channels through them). Every fixed width says why (``MicroLayer.fixed``).
"""

from rsnet.graph.analyze import analyze
from rsnet.graph.types import (Constraint, Form, Group, MacroLayer, MicroLayer, ModelGraph,
                               Polynomial)

__all__ = ["analyze", "ModelGraph", "MicroLayer", "MacroLayer", "Group", "Form", "Polynomial",
           "Constraint"]
