"""An application that uses the functions of examples/tasks (registered as project "demo")."""

from multinode import get_deployed_function

sum_of_squares = get_deployed_function(project_name="demo", function_name="slowly_calculate_sum_of_squares")

invocation_id = sum_of_squares.start(bound=4)
print("started", invocation_id)
print("result:", sum_of_squares.await_result(invocation_id))
invocation = sum_of_squares.get(invocation_id)
print("status:", invocation.status.value, "| container gone:", invocation.terminated)
print("map over [1, 2, 3]:", list(sum_of_squares.map([1, 2, 3])))
