<?php
// The classic recipe, step 1: declare the exchange and the queue and bind them, as php-amqplib
// tutorials do (non-durable). Only the connection's address comes from the environment.
require_once '/usr/share/php/PhpAmqpLib/autoload.php';

use PhpAmqpLib\Connection\AMQPStreamConnection;

$connection = new AMQPStreamConnection('127.0.0.1', getenv('AMQP_PORT'), 'guest', 'guest', getenv('AMQP_VHOST'));
$channel = $connection->channel();

$channel->exchange_declare('task_exchange', 'direct', false, false, false);
$channel->queue_declare('task_queue', false, false, false, false);
$channel->queue_bind('task_queue', 'task_exchange');

$channel->close();
$connection->close();
echo json_encode(['setup' => true]), "\n";
