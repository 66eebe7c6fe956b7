{#-
    One row per customer. Returned orders are not counted (the data has no
    "cancelled" status; "returned" is the status whose revenue does not stick),
    nor are orders below var('demo_shop_min_order_amount').
-#}

with customers as (

    select * from {{ ref('stg_customers') }}

),

orders as (

    select * from {{ ref('stg_orders') }}
    where status <> 'returned'
      and amount >= {{ var('demo_shop_min_order_amount') }}

),

customer_order_stats as (

    select
        customer_id,
        min(ordered_at)     as first_order_at,
        max(ordered_at)     as last_order_at,
        count(*)            as order_count,
        sum(amount)         as lifetime_value

    from orders
    group by customer_id

)

select
    customers.customer_id,
    customers.full_name,
    customers.country,
    stats.first_order_at,
    stats.last_order_at,
    coalesce(stats.order_count, 0)                          as order_count,
    coalesce(stats.lifetime_value, 0)::decimal(14, 2)       as lifetime_value,
    {{ safe_divide('stats.lifetime_value', 'stats.order_count') }}::decimal(14, 2)
                                                            as average_order_value

from customers
left join customer_order_stats as stats
    on customers.customer_id = stats.customer_id
