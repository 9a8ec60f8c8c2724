<?php
// Publishes the malformed task messages that crash or silently lose work on Celery's own
// worker (see celery-protocol.md §3.7), one of each, to QUEUE by the default exchange.
// usage: php php_bad_producer.php PORT QUEUE TASK
require_once '/usr/share/php/PhpAmqpLib/autoload.php';

use PhpAmqpLib\Connection\AMQPStreamConnection;
use PhpAmqpLib\Message\AMQPMessage;
use PhpAmqpLib\Wire\AMQPTable;

[$_, $port, $queue, $task] = $argv;
$conn = new AMQPStreamConnection('127.0.0.1', (int)$port, 'guest', 'guest', '/');
$ch = $conn->channel();
$embed = ['callbacks' => null, 'errbacks' => null, 'chain' => null, 'chord' => null];
$json = ['content_type' => 'application/json', 'content_encoding' => 'utf-8',
         'delivery_mode' => AMQPMessage::DELIVERY_MODE_PERSISTENT];
$cases = [
    'no_content_type' => [json_encode([[2, 3], new stdClass(), $embed]),
                          ['delivery_mode' => AMQPMessage::DELIVERY_MODE_PERSISTENT], []],
    'two_elem_body' => [json_encode([[2, 3], new stdClass()]), $json, []],
    'kwargs_list' => [json_encode([[2, 3], [], $embed]), $json, []],
    'args_string' => [json_encode(['2, 3', new stdClass(), $embed]), $json, []],
    'task_not_string' => [json_encode([[2, 3], new stdClass(), $embed]), $json, ['task' => 42]],
    'invalid_utf8' => ["[[\"\xff\xfe\"], {}, {}]", $json, []],
    'huge_body' => [json_encode([[str_repeat('x', 17 * 1024 * 1024)], new stdClass(), $embed]),
                    $json, []],
];
$ids = [];
foreach ($cases as $name => [$body, $props, $override]) {
    $id = "bad-$name-" . bin2hex(random_bytes(4));
    $props['correlation_id'] = $id;
    $msg = new AMQPMessage($body, $props);
    $msg->set('application_headers', new AMQPTable(array_merge(['task' => $task, 'id' => $id],
                                                               $override)));
    $ch->basic_publish($msg, '', $queue);
    $ids[$name] = $id;
}
$ch->close();
$conn->close();
echo json_encode(['ids' => $ids]), "\n";
