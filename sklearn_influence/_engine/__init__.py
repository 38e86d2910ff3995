"""The engine: per-example gradients, curvature objects, solvers and streamed scores.

===========================  ==============================================================
``_gradients.py``            per-example gradients and measurements (torch.func vmap)
``_curvature_base.py``       :class:`Curvature`, the curvature contract; dense size check
``_gauss_newton.py``         Gauss-Newton (with the Kronecker path for linear models)
``_hessian.py``              Hessian of the training objective
``_identity.py``             identity
``_kronecker.py``            Kronecker factors, eigenbases: base of the factored curvatures
``_kfac.py``                 K-FAC (per layer S ⊗ A)
``_ekfac.py``                EK-FAC (K-FAC's eigenbasis, re-fitted eigenvalues)
``_curvature.py``            registry ``CURVATURES`` and factory ``make_curvature``
``_layers.py``               layer inputs and output gradients (for factored curvatures)
``_solver_base.py``          :class:`Solver`, the solver contract (solve, quadratic); locks
``_direct.py``               eigendecomposition solver
``_cholesky.py``             Cholesky solver
``_iterative.py``            ``IterativeSolver``, base of the matrix-free solvers
``_cg.py``                   preconditioned block conjugate gradient
``_lissa.py``                LiSSA
``_nystrom.py``              Nyström preconditioner for CG
``_factored.py``             a factored curvature's own damped inverse (``"factored"``)
``_near_exact.py``           CG on the exact Gauss-Newton from the factored start (``"near_exact"``)
``_capabilities.py``         declared needs and offers; ``check_pairing`` (named errors)
``_self_check.py``           agreement of an approximation with exact Gauss-Newton CG
``_power_iteration.py``      ``top_eigenvalue`` (LiSSA's scale, the optimisers' step size)
``_solvers.py``              registry ``SOLVERS``, factory ``make_solver``, ``"auto"``
``_influence_engine.py``     ``InfluenceEngine``: streamed influence, self-influence, top-k
===========================  ==============================================================
"""
