"""The coupon service: marketing's caps and pauses, and reservations against them.

It runs inside a worker (role ``coupons``, or ``all``): the ledger agent
folds the coupon stream and the policies of the campaigns whose partitions
the worker owns, and the coupon API answers for them on the worker's web
port (``service``). ``policy`` writes marketing's policies to the compacted
policy topic; ``command`` is ``ctower coupons``.
"""
