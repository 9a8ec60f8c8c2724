<?php
// The classic recipe, step 2: the producer publishes transient messages to the exchange with
// routing key ''. usage: php producer.php MESSAGE...
require_once '/usr/share/php/PhpAmqpLib/autoload.php';

use PhpAmqpLib\Connection\AMQPStreamConnection;
use PhpAmqpLib\Message\AMQPMessage;

$connection = new AMQPStreamConnection('127.0.0.1', getenv('AMQP_PORT'), 'guest', 'guest', getenv('AMQP_VHOST'));
$channel = $connection->channel();

$channel->exchange_declare('task_exchange', 'direct', false, false, false);
$channel->queue_declare('task_queue', false, false, false, false);
$channel->queue_bind('task_queue', 'task_exchange');

foreach (array_slice($argv, 1) as $data) {
    $msg = new AMQPMessage($data);
    $channel->basic_publish($msg, 'task_exchange');
}

$channel->close();
$connection->close();
echo json_encode(['published' => count($argv) - 1]), "\n";
