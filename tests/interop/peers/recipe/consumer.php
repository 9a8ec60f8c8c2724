<?php
// The classic recipe, step 3: the consumer, no_ack = true, prints every body it gets.
// usage: php consumer.php COUNT (stops after COUNT messages or 30 s)
require_once '/usr/share/php/PhpAmqpLib/autoload.php';

use PhpAmqpLib\Connection\AMQPStreamConnection;

$connection = new AMQPStreamConnection('127.0.0.1', getenv('AMQP_PORT'), 'guest', 'guest', getenv('AMQP_VHOST'));
$channel = $connection->channel();

$channel->exchange_declare('task_exchange', 'direct', false, false, false);
$channel->queue_declare('task_queue', false, false, false, false);
$channel->queue_bind('task_queue', 'task_exchange');

$bodies = [];
$callback = function ($msg) use (&$bodies) {
    $bodies[] = $msg->body;
};
$channel->basic_consume('task_queue', '', false, true, false, false, $callback);

$deadline = microtime(true) + 30;
while ($channel->is_consuming() && count($bodies) < (int)$argv[1] && microtime(true) < $deadline) {
    try {
        $channel->wait(null, false, 1);
    } catch (\PhpAmqpLib\Exception\AMQPTimeoutException $e) {
    }
}

$channel->close();
$connection->close();
echo json_encode(['bodies' => $bodies]), "\n";
