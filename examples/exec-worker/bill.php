<?php
// An exec handler: the task arrives as JSON on stdin ({"id", "task", "args", "kwargs", ...});
// what it prints is the result. A last line {"exc_type": ...} on stderr names the failure;
// exit 65 means "do not retry", any other non-zero exit is retried.
$task = json_decode(stream_get_contents(STDIN), true);
$order = $task['kwargs']['order'] ?? null;
if (!is_int($order) || $order <= 0) {
    fwrite(STDERR, json_encode(['exc_type' => 'ValueError',
                                'exc_message' => "no such order: " . json_encode($order)]) . "\n");
    exit(65);
}
echo json_encode(['order' => $order, 'charged' => $task['kwargs']['amount'] ?? 0]);
